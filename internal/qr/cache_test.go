package qr

import (
	"bytes"
	"errors"
	"testing"
)

func TestQRCache(t *testing.T) {
	c, err := NewCache(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	first, hit, err := c.PNG(qrWeChat, Options{})
	if err != nil || hit {
		t.Fatalf("first call: hit=%v err=%v", hit, err)
	}
	c.c.Wait() // Sets are applied asynchronously
	again, hit, err := c.PNG(qrWeChat, Options{Level: 'm', Size: defaultSize})
	if err != nil || !hit || !bytes.Equal(first, again) {
		t.Fatalf("second call with equivalent options: hit=%v err=%v same=%v", hit, err, bytes.Equal(first, again))
	}

	for _, opt := range []Options{{Size: 512}, {Level: 'H'}} {
		b, hit, err := c.PNG(qrWeChat, opt)
		if err != nil || hit {
			t.Fatalf("%+v: hit=%v err=%v", opt, hit, err)
		}
		checkQRImage(t, b, opt)
	}
	if _, _, err := c.PNG("", Options{}); !errors.Is(err, errEmpty) {
		t.Fatalf("empty payload: %v", err)
	}
}

func TestQRCacheNil(t *testing.T) {
	var c *Cache
	for range 2 {
		b, hit, err := c.PNG(qrAlipay, Options{})
		if err != nil || hit {
			t.Fatalf("hit=%v err=%v", hit, err)
		}
		checkQRImage(t, b, Options{})
	}
	c.Close()
}

func TestQRCacheKey(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range []string{
		cacheKey("1:x", Options{Level: 'M', Size: 25}),
		cacheKey("x", Options{Level: 'M', Size: 251}),
		cacheKey("x", Options{Level: 'L', Size: 251}),
		cacheKey("5:x", Options{Level: 'M', Size: 2}),
	} {
		if seen[k] {
			t.Fatalf("duplicate key %q", k)
		}
		seen[k] = true
	}
}

func BenchmarkQRCacheHit(b *testing.B) {
	c, err := NewCache(0)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	png, _, _ := c.PNG(qrWeChat, Options{})
	c.c.Wait()
	b.ReportAllocs()
	for b.Loop() {
		var hit bool
		if png, hit, err = c.PNG(qrWeChat, Options{}); err != nil || !hit {
			b.Fatalf("hit=%v err=%v", hit, err)
		}
	}
	b.ReportMetric(float64(len(png)), "png-bytes")
}
