package ecommpay

import (
	"crypto/sha512"
	"encoding/base64"
	"net/url"
	"sync"
)

// Working memory for the signing modes, so a signed request allocates
// little beyond what outlives it.

// sigLen is the length of a base64 HMAC-SHA512 signature.
const sigLen = (sha512.Size + 2) / 3 * 4

// signScratch is one signing request's buffers.
type signScratch struct {
	pairs  [][2]string
	canon  []byte
	url    []byte
	out    []byte
	sig    [sigLen]byte
	fields pageFields
}

var signPool = sync.Pool{New: func() any {
	return &signScratch{
		pairs: make([][2]string, 0, 32),
		canon: make([]byte, 0, 1024), url: make([]byte, 0, 1024), out: make([]byte, 0, 1024),
	}
}}

// maxPooledScratch bounds what goes back to the pool, so one huge request
// does not pin its memory.
const maxPooledScratch = 64 << 10

func getScratch() *signScratch { return signPool.Get().(*signScratch) }

func (s *signScratch) release() {
	if cap(s.canon) > maxPooledScratch || cap(s.url) > maxPooledScratch ||
		cap(s.out) > maxPooledScratch || cap(s.pairs) > 1024 {
		return
	}
	clear(s.pairs[:cap(s.pairs)]) // do not keep request strings alive
	s.fields = pageFields{}
	s.pairs, s.canon, s.url, s.out = s.pairs[:0], s.canon[:0], s.url[:0], s.out[:0]
	signPool.Put(s)
}

// appendCanonicalPairs appends CanonicalPairs(pairs) to dst.
func appendCanonicalPairs(dst []byte, pairs [][2]string) []byte {
	c := getCanon()
	for _, p := range pairs {
		if p[0] == "frame_mode" {
			continue
		}
		c.path = appendKey(c.path[:0], p[0])
		c.add(c.path, p[1])
	}
	dst = c.finish(dst)
	c.release()
	return dst
}

// signInto writes k.Sign(canonical) to s.sig and returns it as a slice
// of it.
func (s *signScratch) signInto(k *Key, canonical []byte) []byte {
	m := k.mac(canonical)
	base64.StdEncoding.Encode(s.sig[:], m.sum[:])
	k.macs.Put(m)
	return s.sig[:]
}

// pageBase is a Payment Page base URL as u.String() writes it before
// "?" once a query is set, and as a JSON string without its closing quote.
type pageBase struct{ raw, json string }

// newPageBase is u without its query, as a string and JSON-quoted.
func newPageBase(u *url.URL) *pageBase {
	c := *u
	c.RawQuery, c.ForceQuery = "", false
	raw := c.String()
	q := appendQuoted(nil, raw)
	return &pageBase{raw: raw, json: string(q[:len(q)-1])}
}
