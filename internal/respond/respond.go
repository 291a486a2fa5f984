// Package respond owns the module's JSON answers to HTTP clients: the
// small error object every endpoint answers with ({"error": ...,
// "field": ...}) and the headers of a JSON body. Standard library and
// the canon package's string quoting only.
package respond

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
)

// Error answers with a small JSON error. field names the offending
// request field, when there is one.
func Error(w http.ResponseWriter, status int, field, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	out := []byte(`{"error":`)
	out = canon.AppendQuoted(out, msg)
	if field != "" {
		out = append(out, `,"field":`...)
		out = canon.AppendQuoted(out, field)
	}
	out = append(out, "}\n"...)
	JSON(w, status, out)
}

// JSON answers with body, a JSON document, never to be cached.
func JSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
