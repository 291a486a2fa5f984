package ecommpay

import (
	"crypto/sha512"
	"net/url"
	"sync"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
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

// pageBase is a Payment Page base URL as u.String() writes it before
// "?" once a query is set, and as a JSON string without its closing quote.
type pageBase struct{ raw, json string }

// newPageBase is u without its query, as a string and JSON-quoted.
func newPageBase(u *url.URL) *pageBase {
	c := *u
	c.RawQuery, c.ForceQuery = "", false
	raw := c.String()
	q := canon.AppendQuoted(nil, raw)
	return &pageBase{raw: raw, json: string(q[:len(q)-1])}
}
