package ecommpay

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
)

// The reference below is the Payment Page signer as first written, on
// net/url and the string APIs: the pooled one must match it byte for byte.

func referenceParseQuery(q string) ([][2]string, *refusal) {
	var pairs [][2]string
	for part := range strings.SplitSeq(q, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, paramRefusal(key, len(pairs), "bad URL encoding")
		}
		if _, dup := findPair(pairs, key); dup {
			return nil, paramRefusal(key, len(pairs), "given more than once")
		}
		pairs = append(pairs, [2]string{key, val})
	}
	return pairs, nil
}

func referenceSignPaymentPage(h *Handler, pairs [][2]string) (signedURL, signature string, _ *project, _ *refusal) {
	for i, p := range pairs {
		if strings.Contains(p[0], ";") || strings.Contains(p[1], ";") {
			return "", "", nil, paramRefusal(p[0], i, "';' is not allowed in Payment Page parameters")
		}
		if strings.Contains(p[0], ":") {
			return "", "", nil, paramRefusal(p[0], i, "':' is not allowed in Payment Page parameter names")
		}
		if p[0] == "signature" {
			return "", "", nil, paramRefusal(p[0], i, "leave signature out: it is computed here")
		}
	}
	for _, f := range []string{"payment_id", "payment_amount", "payment_currency"} {
		if lookupPair(pairs, f) == "" {
			return "", "", nil, &refusal{http.StatusBadRequest, "invalid", f, f + " is required"}
		}
	}
	if a := lookupPair(pairs, "payment_amount"); !isPositiveInteger(a) {
		return "", "", nil, &refusal{http.StatusBadRequest, "invalid", "payment_amount", "must be a positive integer in minor units"}
	}
	id, given := findPair(pairs, "project_id")
	p, rf := h.projectFor(id, given, false, "project_id")
	if rf != nil {
		return "", "", nil, rf
	}
	if !given {
		pairs = append(slices.Clip(pairs), [2]string{"project_id", p.id})
	}
	signature = p.keys[0].Sign([]byte(canonicalPairs(pairs)))
	var q strings.Builder
	for _, kv := range pairs {
		q.WriteString(url.QueryEscape(kv[0]) + "=" + url.QueryEscape(kv[1]) + "&")
	}
	q.WriteString("signature=" + url.QueryEscape(signature))
	u := *h.paymentPage
	u.RawQuery = q.String()
	return u.String(), signature, p, nil
}

func TestPageBaseMatchesURLString(t *testing.T) {
	for _, base := range []string{
		defaultBaseURL, "http://127.0.0.1:8081", "https://pp.example.test/x/", "https://pp.example.test/?",
		"https://user:p%40ss@pp.example.test/a%20b/", "http://[::1]:8080/c", "https://pp.example.test/#",
		`https://a"b/`,
	} {
		h := paymentPageHandler(t, func(h *Handler) { h.BaseURL = base })
		u := *h.paymentPage
		u.RawQuery = "a=1"
		for _, b := range []*pageBase{h.pageBase, newPageBase(h.paymentPage)} {
			var back string
			if err := json.Unmarshal([]byte(b.json+`"`), &back); err != nil || back != b.raw {
				t.Errorf("%s: JSON %s is not %q: %v", base, b.json, b.raw, err)
			}
			if got := b.raw + "?a=1"; got != u.String() {
				t.Errorf("%s: %q, want %q", base, got, u.String())
			}
		}
	}
}

// FuzzPaymentPageMatchesReference checks parsing, the signed URL, the
// signature and the whole answer against the reference.
func FuzzPaymentPageMatchesReference(f *testing.F) {
	f.Add(pageQuery)
	f.Add(benchQuery)
	f.Add("payment_id=a%3Ab&payment_amount=9&payment_currency=%E2%82%AC&a:b:=c%00d&e=%7e~+*'()!")
	f.Add("payment_id=1&&payment_amount=1&payment_currency=USD&x&=y&%20=%2B&frame_mode=iframe")
	f.Add("payment_id=1&payment_amount=1&payment_currency=USD&project_id=210&bad=%g1")
	f.Add("payment_id=1&payment_amount=1&payment_currency=USD&payment%5fid=2")
	f.Add("signature=a;b&payment_id=1&payment_amount=1&payment_currency=USD")
	f.Add("a=%3B&signature=x&payment_amount=0&project_id=")
	f.Add("payment_id=1&payment_amount=01&payment_currency=USD&project_id=211&signature")
	var hs []*Handler
	for _, base := range []string{"https://u:p@pp.example.test/a%20b/", `https://a"b/`} {
		hs = append(hs, paymentPageHandler(f, func(h *Handler) { h.BaseURL = base }))
	}
	f.Fuzz(func(t *testing.T, q string) {
		want, wantRf := referenceParseQuery(q)
		got, gotRf := parseQueryOrdered(q)
		if (wantRf == nil) != (gotRf == nil) || wantRf != nil && *wantRf != *gotRf {
			t.Fatalf("refusal %+v, want %+v", gotRf, wantRf)
		}
		if wantRf != nil {
			return
		}
		if len(got) != len(want) {
			t.Fatalf("pairs %q, want %q", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("pairs %q, want %q", got, want)
			}
		}
		for _, h := range hs {
			r := httptestRequest(http.MethodGet, "/pay")
			r.URL.RawQuery = q // as sent, even where NewRequest would refuse it
			w := serve(h, r, nil)
			ref := httptest.NewRecorder()
			refURL, refSig, refP, refRf := referenceSignPaymentPage(h, want)
			signed, sig, p, rf := h.signPaymentPage(want)
			if signed != refURL || sig != refSig || p != refP || (rf == nil) != (refRf == nil) || rf != nil && *rf != *refRf {
				t.Fatalf("signed %q %q %v %+v\nwant %q %q %v %+v", signed, sig, p, rf, refURL, refSig, refP, refRf)
			}
			if refRf != nil {
				respond.Error(ref, refRf.status, refRf.field, "%s", refRf.msg)
			} else {
				body := canon.AppendQuoted([]byte(`{"url":`), refURL)
				body = canon.AppendQuoted(append(body, `,"signature":`...), refSig)
				respond.JSON(ref, http.StatusOK, append(body, "}\n"...))
			}
			if w.Code != ref.Code || w.Body.String() != ref.Body.String() || !reflect.DeepEqual(w.Header(), ref.Header()) {
				t.Fatalf("answer %d %v %s\nwant %d %v %s", w.Code, w.Header(), w.Body, ref.Code, ref.Header(), ref.Body)
			}
		}
	})
}
