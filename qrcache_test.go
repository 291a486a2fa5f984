package ecommpay

import (
	"bytes"
	"errors"
	"testing"
)

func TestQRCache(t *testing.T) {
	c, err := NewQRCache(0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	first, hit, err := c.PNG(qrWeChat, QROptions{})
	if err != nil || hit {
		t.Fatalf("first call: hit=%v err=%v", hit, err)
	}
	c.c.Wait() // Sets are applied asynchronously
	again, hit, err := c.PNG(qrWeChat, QROptions{Level: 'm', Size: DefaultQRSize})
	if err != nil || !hit || !bytes.Equal(first, again) {
		t.Fatalf("second call with equivalent options: hit=%v err=%v same=%v", hit, err, bytes.Equal(first, again))
	}

	for _, opt := range []QROptions{{Size: 512}, {Level: 'H'}} {
		b, hit, err := c.PNG(qrWeChat, opt)
		if err != nil || hit {
			t.Fatalf("%+v: hit=%v err=%v", opt, hit, err)
		}
		checkQRImage(t, b, opt)
	}
	if _, _, err := c.PNG("", QROptions{}); !errors.Is(err, ErrQREmpty) {
		t.Fatalf("empty payload: %v", err)
	}
}

func TestQRCacheNil(t *testing.T) {
	var c *QRCache
	for range 2 {
		b, hit, err := c.PNG(qrAlipay, QROptions{})
		if err != nil || hit {
			t.Fatalf("hit=%v err=%v", hit, err)
		}
		checkQRImage(t, b, QROptions{})
	}
	c.Close()
}

func TestQRCacheKey(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range []string{
		qrCacheKey("1:x", QROptions{Level: 'M', Size: 25}),
		qrCacheKey("x", QROptions{Level: 'M', Size: 251}),
		qrCacheKey("x", QROptions{Level: 'L', Size: 251}),
		qrCacheKey("5:x", QROptions{Level: 'M', Size: 2}),
	} {
		if seen[k] {
			t.Fatalf("duplicate key %q", k)
		}
		seen[k] = true
	}
}

func BenchmarkQRCacheHit(b *testing.B) {
	c, err := NewQRCache(0)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	png, _, _ := c.PNG(qrWeChat, QROptions{})
	c.c.Wait()
	b.ReportAllocs()
	for b.Loop() {
		var hit bool
		if png, hit, err = c.PNG(qrWeChat, QROptions{}); err != nil || !hit {
			b.Fatalf("hit=%v err=%v", hit, err)
		}
	}
	b.ReportMetric(float64(len(png)), "png-bytes")
}
