package ecommpay

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// errTooLarge marks a body over max_body.
var errTooLarge = errors.New("request body too large")

// readBody reads the whole body, refusing more than max bytes. A declared
// Content-Length over the bound is refused before anything is read.
func readBody(r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, errTooLarge
	}
	// A declared size within max is read into one buffer: growing by
	// doubling would leave three times the body as garbage. An undeclared
	// one grows as it comes.
	size := r.ContentLength
	if size < 0 {
		size = 4 << 10
	}
	buf := make([]byte, 0, size+1)
	lr := io.LimitReader(r.Body, max+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > max {
			return nil, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// writeError answers with a small JSON error. field names the offending
// request field, when there is one.
func writeError(w http.ResponseWriter, status int, field, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	out := []byte(`{"error":`)
	out = appendQuoted(out, msg)
	if field != "" {
		out = append(out, `,"field":`...)
		out = appendQuoted(out, field)
	}
	out = append(out, "}\n"...)
	writeJSON(w, status, out)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
