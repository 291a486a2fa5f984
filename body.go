package ecommpay

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
)

// errTooLarge marks a body over max_body.
var errTooLarge = errors.New("request body too large")

// readBody reads the whole body as a string, refusing more than max bytes.
// A declared Content-Length over the bound is refused before anything is
// read. A string, because the parser's values point into it: reading into
// a strings.Builder makes it without a second copy of the body.
func readBody(r *http.Request, max int64) (string, error) {
	if r.ContentLength > max {
		return "", errTooLarge
	}
	var b strings.Builder
	// A declared size within max is read into one buffer: growing by
	// doubling would leave three times the body as garbage. An undeclared
	// one grows as it comes.
	if r.ContentLength > 0 {
		b.Grow(int(r.ContentLength) + 1)
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	n, err := io.CopyBuffer(&b, io.LimitReader(r.Body, max+1), *buf)
	switch {
	case n > max:
		return "", errTooLarge
	case err != nil:
		return "", err
	}
	return b.String(), nil
}

// copyBufs are readBody's transfer buffers.
var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, 16<<10)
	return &b
}}
