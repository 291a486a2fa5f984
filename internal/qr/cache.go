package qr

import (
	"strconv"
	"strings"

	"github.com/dgraph-io/ristretto/v2"
)

// DefaultCacheBytes is the cache budget NewCache uses for maxBytes <= 0.
const DefaultCacheBytes = 16 << 20

// Cache memoises Render. Sets are asynchronous and may be dropped, which
// only costs a re-render, so a lossy cache is fine here. A nil *Cache
// renders every time.
type Cache struct {
	c *ristretto.Cache[string, []byte]
}

// NewCache returns a cache holding up to maxBytes of PNG data.
func NewCache(maxBytes int64) (*Cache, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	c, err := ristretto.NewCache(&ristretto.Config[string, []byte]{
		// Ten counters per item expected at ~1 KB per PNG, as ristretto advises.
		NumCounters:        max(10*maxBytes>>10, 1000),
		MaxCost:            maxBytes,
		BufferItems:        64,
		IgnoreInternalCost: true, // cost is the PNG size only
	})
	if err != nil {
		return nil, err
	}
	return &Cache{c: c}, nil
}

// PNG returns Render(payload, opt), from the cache when hit is true.
// Callers must not modify the returned slice: it is shared.
func (c *Cache) PNG(payload string, opt Options) (png []byte, hit bool, err error) {
	if c == nil {
		png, err = Render(payload, opt)
		return png, false, err
	}
	opt, err = opt.Normalize()
	if err != nil {
		return nil, false, err
	}
	key := cacheKey(payload, opt)
	if png, ok := c.c.Get(key); ok {
		return png, true, nil
	}
	if png, err = Render(payload, opt); err != nil {
		return nil, false, err
	}
	c.c.Set(key, png, int64(len(png)))
	return png, false, nil
}

// Close stops the cache's goroutines; the cache must not be used afterwards.
func (c *Cache) Close() {
	if c != nil {
		c.c.Close()
	}
}

// cacheKey frames level and size ahead of the payload, so keys never collide.
func cacheKey(payload string, opt Options) string {
	var num [20]byte
	size := strconv.AppendInt(num[:0], int64(opt.Size), 10)
	var b strings.Builder
	b.Grow(2 + len(size) + len(payload))
	b.WriteByte(opt.Level)
	b.Write(size)
	b.WriteByte(':')
	b.WriteString(payload)
	return b.String()
}
