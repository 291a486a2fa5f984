package integration

// An independent Go implementation of the ecommpay signature (PHP SDK rules,
// spec §1.2), used by the fake ecommpay. It deliberately does not call the
// module's own signer: the fake plays the platform, so it must not share the
// code it is checking. TestSignerVectors pins it to the conformance vectors.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// member is one key/value pair of a JSON object, in document order.
type member struct {
	Key   string
	Value any
}

// object is a JSON object that keeps its document order (ties in the natural
// sort keep document order, like PHP's stable sort).
type object []member

func (o object) get(key string) (any, bool) {
	// Last one wins, as with json_decode.
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].Key == key {
			return o[i].Value, true
		}
	}
	return nil, false
}

// parseOrdered decodes JSON into object / []any / string / json.Number /
// bool / nil, keeping object member order and number literals.
func parseOrdered(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	return v, nil
}

func parseValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := object{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key is not a string")
				}
				val, err := parseValue(dec)
				if err != nil {
					return nil, err
				}
				// json_decode keeps the first position and the last value.
				replaced := false
				for i := range obj {
					if obj[i].Key == key {
						obj[i].Value = val
						replaced = true
					}
				}
				if !replaced {
					obj = append(obj, member{key, val})
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return obj, nil
		case '[':
			arr := []any{}
			for dec.More() {
				val, err := parseValue(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, val)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	default:
		return t, nil
	}
}

type flatItem struct{ path, value string }

func flattenInto(prefix string, v any, stripSignature bool, out *[]flatItem) {
	switch t := v.(type) {
	case object:
		for _, m := range t {
			if m.Key == "frame_mode" || (stripSignature && m.Key == "signature") {
				continue
			}
			seg := strings.ReplaceAll(m.Key, ":", "::")
			p := seg
			if prefix != "" {
				p = prefix + ":" + seg
			}
			flattenInto(p, m.Value, stripSignature, out)
		}
	case []any:
		for i, e := range t {
			p := strconv.Itoa(i)
			if prefix != "" {
				p = prefix + ":" + p
			}
			flattenInto(p, e, stripSignature, out)
		}
	default:
		*out = append(*out, flatItem{prefix, renderScalar(v)})
	}
}

func renderScalar(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case bool:
		if t {
			return "1"
		}
		return "0"
	case string:
		return t
	case json.Number:
		s := string(t)
		if !strings.ContainsAny(s, ".eE") {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				return strconv.FormatInt(n, 10)
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil && !math.IsInf(f, 0) {
			return s
		}
		return phpFloat(f)
	case float64:
		return phpFloat(t)
	case int:
		return strconv.Itoa(t)
	case int64:
		return strconv.FormatInt(t, 10)
	}
	return fmt.Sprint(v)
}

// phpFloat renders like PHP's (string)$float with precision 14.
func phpFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "INF"
	}
	if math.IsInf(f, -1) {
		return "-INF"
	}
	if math.IsNaN(f) {
		return "NAN"
	}
	s := strconv.FormatFloat(f, 'e', 13, 64) // d.ddddddddddddde±XX
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	mant, expS, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expS)
	digits := strings.TrimRight(strings.Replace(mant, ".", "", 1), "0")
	sign := ""
	if neg {
		sign = "-"
	}
	if digits == "" {
		return sign + "0"
	}
	decpt := exp + 1
	if decpt < -3 || decpt > 14 {
		m := digits[:1] + "."
		if len(digits) > 1 {
			m += digits[1:]
		} else {
			m += "0"
		}
		es := "+"
		e := decpt - 1
		if e < 0 {
			es = "-"
			e = -e
		}
		return sign + m + "E" + es + strconv.Itoa(e)
	}
	if decpt <= 0 {
		return sign + "0." + strings.Repeat("0", -decpt) + digits
	}
	if len(digits) <= decpt {
		return sign + digits + strings.Repeat("0", decpt-len(digits))
	}
	return sign + digits[:decpt] + "." + digits[decpt:]
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isSpace(c byte) bool { return c == ' ' || (c >= '\t' && c <= '\r') }

// strnatcmp ports PHP 8's strnatcmp_ex (case sensitive).
func strnatcmp(a, b string) int {
	if len(a) == 0 || len(b) == 0 {
		switch {
		case len(a) == len(b):
			return 0
		case len(a) > len(b):
			return 1
		}
		return -1
	}
	at := func(s string, i int) byte {
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	ai, bi := 0, 0
	leading := true
	for {
		ca, cb := at(a, ai), at(b, bi)
		for leading && ca == '0' && ai+1 < len(a) && isDigit(a[ai+1]) {
			ai++
			ca = a[ai]
		}
		for leading && cb == '0' && bi+1 < len(b) && isDigit(b[bi+1]) {
			bi++
			cb = b[bi]
		}
		leading = false
		for isSpace(ca) {
			ai++
			ca = at(a, ai)
		}
		for isSpace(cb) {
			bi++
			cb = at(b, bi)
		}
		if isDigit(ca) && isDigit(cb) {
			var r int
			if ca == '0' || cb == '0' {
				r = natCompareLeft(a, &ai, b, &bi)
			} else {
				r = natCompareRight(a, &ai, b, &bi)
			}
			if r != 0 {
				return r
			}
			switch {
			case ai == len(a) && bi == len(b):
				return 0
			case ai == len(a):
				return -1
			case bi == len(b):
				return 1
			}
			ca, cb = a[ai], b[bi]
		}
		if ca < cb {
			return -1
		}
		if ca > cb {
			return 1
		}
		ai++
		bi++
		switch {
		case ai >= len(a) && bi >= len(b):
			return 0
		case ai >= len(a):
			return -1
		case bi >= len(b):
			return 1
		}
	}
}

func natCompareRight(a string, ai *int, b string, bi *int) int {
	bias := 0
	for ; ; *ai, *bi = *ai+1, *bi+1 {
		ad := *ai < len(a) && isDigit(a[*ai])
		bd := *bi < len(b) && isDigit(b[*bi])
		switch {
		case !ad && !bd:
			return bias
		case !ad:
			return -1
		case !bd:
			return 1
		case a[*ai] < b[*bi]:
			if bias == 0 {
				bias = -1
			}
		case a[*ai] > b[*bi]:
			if bias == 0 {
				bias = 1
			}
		}
	}
}

func natCompareLeft(a string, ai *int, b string, bi *int) int {
	for ; ; *ai, *bi = *ai+1, *bi+1 {
		ad := *ai < len(a) && isDigit(a[*ai])
		bd := *bi < len(b) && isDigit(b[*bi])
		switch {
		case !ad && !bd:
			return 0
		case !ad:
			return -1
		case !bd:
			return 1
		case a[*ai] < b[*bi]:
			return -1
		case a[*ai] > b[*bi]:
			return 1
		}
	}
}

// canonicalOf flattens, natural-sorts by path and joins with ';'.
func canonicalOf(v any, stripSignature bool) string {
	var items []flatItem
	flattenInto("", v, stripSignature, &items)
	sort.SliceStable(items, func(i, j int) bool { return strnatcmp(items[i].path, items[j].path) < 0 })
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = it.path + ":" + it.value
	}
	return strings.Join(parts, ";")
}

// hmacSign is base64(HMAC-SHA512(secret, canonical)).
func hmacSign(canonical, secret string) string {
	m := hmac.New(sha512.New, []byte(secret))
	m.Write([]byte(canonical))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// signCanonicalJSON is the sign-mode canonical string of a JSON body: every
// member except frame_mode, nested signature keys kept.
func signCanonicalJSON(body []byte) (string, error) {
	v, err := parseOrdered(body)
	if err != nil {
		return "", err
	}
	return canonicalOf(v, false), nil
}

// embeddedSignature returns top-level "signature", else general.signature.
func embeddedSignature(v any) (string, bool) {
	obj, ok := v.(object)
	if !ok {
		return "", false
	}
	if s, ok := obj.get("signature"); ok {
		str, isStr := s.(string)
		return str, isStr
	}
	if g, ok := obj.get("general"); ok {
		if gobj, ok := g.(object); ok {
			if s, ok := gobj.get("signature"); ok {
				str, isStr := s.(string)
				return str, isStr
			}
		}
	}
	return "", false
}

// verifyCallbackBody checks a callback-style body (PHP semantics: strip every
// signature key at any depth, compare with the embedded one).
func verifyCallbackBody(body []byte, secret string) (ok bool, reason string) {
	v, err := parseOrdered(body)
	if err != nil {
		return false, "malformed JSON: " + err.Error()
	}
	sig, found := embeddedSignature(v)
	if !found || sig == "" {
		return false, "no signature"
	}
	want := hmacSign(canonicalOf(v, true), secret)
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return false, "signature mismatch"
	}
	return true, ""
}

// signJSONWithSignatureAt marshals body, signs it (without any signature
// member) and stores the signature at the top level or at general.signature.
func signJSONWithSignatureAt(body map[string]any, secret string, inGeneral bool) []byte {
	delete(body, "signature")
	if g, ok := body["general"].(map[string]any); ok {
		delete(g, "signature")
	}
	raw, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	canon, err := signCanonicalJSON(raw)
	if err != nil {
		panic(err)
	}
	sig := hmacSign(canon, secret)
	if inGeneral {
		g, ok := body["general"].(map[string]any)
		if !ok {
			g = map[string]any{}
			body["general"] = g
		}
		g["signature"] = sig
	} else {
		body["signature"] = sig
	}
	out, err := json.Marshal(body)
	if err != nil {
		panic(err)
	}
	return out
}
