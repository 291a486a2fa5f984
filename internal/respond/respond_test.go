package respond

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// An error answer is one JSON object with the message (quoted, whatever
// it holds) and the field when there is one, never cached.
func TestError(t *testing.T) {
	w := httptest.NewRecorder()
	Error(w, http.StatusBadRequest, "payment_id", "bad %q\n</script>", "x\"y")
	var got map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	if got["error"] != "bad \"x\\\"y\"\n</script>" || got["field"] != "payment_id" || len(got) != 2 {
		t.Fatalf("answer %v", got)
	}
	h := w.Header()
	if w.Code != http.StatusBadRequest || h.Get("Content-Type") != "application/json" || h.Get("Cache-Control") != "no-store" ||
		h.Get("Content-Length") != strconv.Itoa(w.Body.Len()) {
		t.Fatalf("%d %v", w.Code, h)
	}
	w = httptest.NewRecorder()
	Error(w, http.StatusNotFound, "", "not found")
	if w.Body.String() != "{\"error\":\"not found\"}\n" {
		t.Fatalf("without a field: %q", w.Body)
	}
}
