package canon

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/vectors"
)

func loadVectors(tb testing.TB) []vectors.Vector {
	tb.Helper()
	vs, err := vectors.Load()
	if err != nil {
		tb.Fatal(err)
	}
	return vs
}

// callbackCanonical, canonicalPairs and sign are the signature
// package's entry points, rebuilt here (it imports this one).
func callbackCanonical(body []byte) (canonical, signature string, err error) {
	d, err := Parse(body, Limits{})
	if err != nil {
		return "", "", err
	}
	defer d.Release()
	return string(d.Canonical(nil, true)), d.EmbeddedSignature(), nil
}

func canonicalPairs(pairs [][2]string) string { return string(AppendPairs(nil, pairs)) }

func sign(canonical, secret string) string { return NewKey(secret).Sign([]byte(canonical)) }

// TestVectorsHaveCallbackShape: every callback of the official SDKs, sound
// or tampered, has a callback's shape. (The signature package runs the
// vectors' canonical strings and signatures through this package.)
func TestVectorsHaveCallbackShape(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t) {
		if v.Type != "callback" {
			continue
		}
		d, err := Parse([]byte(v.RawBody), Limits{})
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if !d.CallbackShaped() {
			t.Errorf("%s: refused as not a callback: %s", v.Name, v.RawBody)
		}
		d.Release()
		n++
	}
	if n != vectors.CallbackCases {
		t.Fatalf("%d callback vectors, want %d", n, vectors.CallbackCases)
	}
}

func TestNatCompare(t *testing.T) {
	ordered := [][]string{
		{"items:2", "items:10"},
		{"a", "a1", "a2", "a10", "a_b"},
		{"a1", "a:x"},
		{"x2y9", "x2y10", "x10y1"},
		{"a", "a-b", "a.b", "a/b", "a b"},
		{"A", "B", "a"},
		{"a", "é"},
		{"a01", "a1"}, // left-aligned compare when a run starts with 0
		{"x09", "x1"},
	}
	for _, seq := range ordered {
		for i := 0; i+1 < len(seq); i++ {
			a, b := []byte(seq[i]), []byte(seq[i+1])
			if natCompare(a, b) >= 0 || natCompare(b, a) <= 0 {
				t.Errorf("want %q < %q", a, b)
			}
		}
	}
	equal := [][2]string{{"ab", "a b"}, {"007", "7"}, {"", ""}, {"a10", "a10"}}
	for _, p := range equal {
		if natCompare([]byte(p[0]), []byte(p[1])) != 0 {
			t.Errorf("want %q == %q", p[0], p[1])
		}
	}
}

func TestRenderNumber(t *testing.T) {
	cases := map[string]string{
		"0": "0", "-0": "0", "42": "42", "-17": "-17",
		"9223372036854775807":  "9223372036854775807",
		"18446744073709551616": "1.844674407371E+19",
		"1.5":                  "1.5", "100.0": "100", "0.30000000000000004": "0.3",
		"1e21": "1.0E+21", "1e14": "1.0E+14", "1e13": "10000000000000",
		"0.0001": "0.0001", "0.00001": "1.0E-5", "-0.0": "-0", "1.5e-7": "1.5E-7",
		"-2.5": "-2.5", "1e400": "INF", "-1e400": "-INF", "123456789012345678": "123456789012345678",
		"1234567.891": "1234567.891", "0.1": "0.1", "2.0E2": "200",
	}
	cases["-123456789012345678"] = "-123456789012345678"
	cases["-1234567890123456789"] = "-1234567890123456789"
	cases["-9223372036854775809"] = "-9.2233720368548E+18"
	for in, want := range cases {
		if got := RenderNumber(in); got != want {
			t.Errorf("RenderNumber(%s) = %s, want %s", in, got, want)
		}
		// Both walks take the literal as is when the parser saw it can.
		for body, canonical := range map[string]string{
			`{"n":` + in + `,"a":[` + in + `]}`: "a:0:" + want + ";n:" + want,
			`{"n":` + in + `,"a:b":` + in + `}`: "a::b:" + want + ";n:" + want,
		} {
			d, err := Parse([]byte(body), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if got := string(d.Canonical(nil, false)); got != canonical {
				t.Errorf("Canonical of %s: %s, want %s", body, got, canonical)
			}
			d.Release()
		}
	}
}

func TestParseRejects(t *testing.T) {
	bad := map[string]error{
		`{"a":1,}`:              ErrMalformed,
		`{"a":1 "b":2}`:         ErrMalformed,
		`{"a":01}`:              ErrMalformed,
		`{"a":1.}`:              ErrMalformed,
		`{"a":+1}`:              ErrMalformed,
		`{"a":"x` + "\n" + `"}`: ErrMalformed,
		`{"a":"\x"}`:            ErrMalformed,
		`{"a":"\ud800"}`:        ErrMalformed,
		`{"a":"\udc00x"}`:       ErrMalformed,
		"{\"a\":\"\xff\"}":      ErrMalformed,
		`{"a":1,"a":2}`:         ErrMalformed,
		`{"a":1,"\u0061":2}`:    ErrMalformed,
		`{"a":1} x`:             ErrMalformed,
		`tru`:                   ErrMalformed,
		``:                      ErrMalformed,
		`{"a":[`:                ErrMalformed,
		strings.Repeat("[", 40) + strings.Repeat("]", 40):                                     errTooDeep,
		`[` + strings.Repeat(`1,`, 10000) + `1]`:                                              errTooManyLeaves,
		`["` + strings.Repeat("x", defaultMaxString+1) + `"]`:                                 errStringTooLong,
		`["` + strings.Repeat(`\n`, defaultMaxString) + `"]`:                                  errStringTooLong,
		`{"` + strings.Repeat("k", defaultMaxKey+1) + `":1}`:                                  errKeyTooLong,
		`{"` + strings.Repeat("k", defaultMaxKey) + `":[` + strings.Repeat(`1,`, 200) + `1]}`: errTooExpensive,
	}
	for in, want := range bad {
		d, err := Parse([]byte(in), Limits{})
		if !errors.Is(err, want) {
			t.Errorf("Parse(%.40q) = %v, want %v", in, err, want)
		}
		if d != nil {
			t.Errorf("Parse(%.40q) returned a Doc with an error", in)
		}
	}
	// A wide object exercises the map-based duplicate check.
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < 100; i++ {
		b.WriteString(`"k` + strings.Repeat("x", i) + `":1,`)
	}
	b.WriteString(`"kxxx":2}`)
	if _, err := Parse([]byte(b.String()), Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("duplicate in a wide object: %v", err)
	}
}

func TestDocEditAndWrite(t *testing.T) {
	in := `{"general":{"project_id":210,"signature":"old"},"payment":{"amount":1.50,"big":123456789012345678901},"s":"a\"<b>\u00e9","z":[1,{"k":null}],"e":{}}`
	d, err := Parse([]byte(in), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release()
	g := d.Get(d.Root(), "general")
	d.Set(g, "signature", String, "new")
	d.Delete(d.Root(), "e")
	d.Set(d.Root(), "added", Number, "7")
	got := string(d.AppendJSON(nil))
	want := `{"general":{"project_id":210,"signature":"new"},"payment":{"amount":1.50,"big":123456789012345678901},"s":"a\"<b>é","z":[1,{"k":null}],"added":7}`
	if got != want {
		t.Fatalf("\n got %s\nwant %s", got, want)
	}
	var check any
	if err := json.Unmarshal([]byte(got), &check); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyRejectsMalformedSignatures(t *testing.T) {
	k := NewKey("secret")
	good := k.Sign([]byte("a:1"))
	for _, sig := range []string{"", "x", good[:87], good + "=", strings.Repeat("A", 88), strings.ToLower(good)} {
		if k.Verify([]byte("a:1"), sig) {
			t.Errorf("accepted %q", sig)
		}
	}
	if !k.Verify([]byte("a:1"), good) || NewKey("other").Verify([]byte("a:1"), good) {
		t.Fatal("verify does not tell the right key from a wrong one")
	}
}

func TestCanonicalPairs(t *testing.T) {
	got := canonicalPairs([][2]string{{"payment_id", "X1"}, {"frame_mode", "popup"}, {"project_id", "12"}, {"a:b", "1"}})
	if want := "a::b:1;payment_id:X1;project_id:12"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.ParamsJSON))
		if v.RawBody != "" {
			f.Add([]byte(v.RawBody))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := Parse(body, Limits{})
		if err != nil {
			if json.Valid(body) && !errors.Is(err, errTooDeep) && !errors.Is(err, errTooManyLeaves) &&
				!errors.Is(err, errStringTooLong) && !errors.Is(err, errKeyTooLong) &&
				!errors.Is(err, errTooExpensive) && !strings.Contains(err.Error(), "duplicate key") &&
				!strings.Contains(err.Error(), "surrogate") && utf8.Valid(body) {
				t.Fatalf("rejected valid JSON: %v", err)
			}
			return
		}
		defer d.Release()
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		c1 := d.Canonical(nil, true)
		// Writing the document back must keep its canonical string.
		out := d.AppendJSON(nil)
		d2, err := Parse(out, Limits{MaxString: 1 << 30, MaxLeaves: 1 << 30, MaxDepth: 1 << 10, MaxKey: 1 << 30})
		if errors.Is(err, errTooExpensive) && len(out) < len(body) {
			return // a compact rewrite has a smaller budget than a padded original
		}
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, out)
		}
		defer d2.Release()
		if c2 := d2.Canonical(nil, true); string(c1) != string(c2) {
			t.Fatalf("canonical changed after a round trip:\n%q\n%q", c1, c2)
		}
	})
}

// typicalCallback is a realistic 1.5 KB signed callback (53 leaves).
func typicalCallback(tb testing.TB, secret string) []byte {
	tb.Helper()
	body := `{"project_id":238,"payment":{"id":"TEST_154866061847343331","type":"purchase","status":"success","date":"2019-01-28T08:07:22+0000","method":"wechat","sum":{"amount":100,"currency":"EUR"},"description":"TEST_1548660618473453"},"account":{"number":"wechat-user-8842"},"customer":{"id":"customer123","ip_address":"192.0.2.10","email":"customer@example.com","phone":"19121234567"},"operation":{"id":9227000002916,"type":"sale","status":"success","date":"2019-01-28T08:07:22+0000","created_date":"2019-01-28T08:06:40+0000","request_id":"67af98801524dfa9c5cddb1a09129-00000001","sum_initial":{"amount":100,"currency":"EUR"},"sum_converted":{"amount":100,"currency":"EUR"},"provider":{"id":1173,"payment_id":"423163569","date":"2019-01-28T08:07:22+0000","auth_code":"","endpoint_id":1173},"code":"0","message":"Success","eci":"7"},"recurring":{"id":null,"currency":null},"operations":[{"id":9227000002915,"type":"sale","status":"awaiting customer","date":"2019-01-28T08:06:41+0000","code":"0","message":"Awaiting customer action","sum":{"amount":100,"currency":"EUR"}},{"id":9227000002916,"type":"sale","status":"success","date":"2019-01-28T08:07:22+0000","code":"0","message":"Success","sum":{"amount":100,"currency":"EUR"}}],"general":{"project_id":238,"payment_id":"TEST_154866061847343331"}}`
	canonical, _, err := callbackCanonical([]byte(body))
	if err != nil {
		tb.Fatal(err)
	}
	sig := sign(canonical, secret)
	return []byte(body[:len(body)-2] + `,"signature":"` + sig + `"}}`)
}

func BenchmarkSignCanonical(b *testing.B) {
	body := typicalCallback(b, "secret")
	k := NewKey("secret")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	buf := make([]byte, 0, 4096)
	for b.Loop() {
		d, err := Parse(body, Limits{}) // as the handlers parse
		if err != nil {
			b.Fatal(err)
		}
		buf = d.Canonical(buf[:0], false)
		_ = k.Sign(buf)
		d.Release()
	}
}

// BenchmarkVerifyCallback is the whole check of one callback: parse,
// canonicalise without signatures, HMAC, constant-time compare.
func BenchmarkVerifyCallback(b *testing.B) {
	body := typicalCallback(b, "secret")
	k := NewKey("secret")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	buf := make([]byte, 0, 4096)
	for b.Loop() {
		d, err := Parse(body, Limits{}) // as the handlers parse
		if err != nil {
			b.Fatal(err)
		}
		buf = d.Canonical(buf[:0], true)
		if !k.Verify(buf, d.EmbeddedSignature()) {
			b.Fatal("does not verify")
		}
		d.Release()
	}
}

// BenchmarkBareHMAC is the baseline: HMAC-SHA512 of the same canonical
// string with a fresh hmac, the least any verifier must do.
func BenchmarkBareHMAC(b *testing.B) {
	body := typicalCallback(b, "secret")
	canonical, _, err := callbackCanonical(body)
	if err != nil {
		b.Fatal(err)
	}
	msg, key := []byte(canonical), []byte("secret")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	var out [64]byte
	for b.Loop() {
		m := hmac.New(sha512.New, key)
		m.Write(msg)
		m.Sum(out[:0])
	}
}

// sortedCanonical is the canonical string by the sort of all paths, which
// Canonical uses only when a member name is not tame.
func sortedCanonical(d *Doc, stripSignatures bool) []byte {
	wild := d.wild
	d.wild = true
	defer func() { d.wild = wild }()
	return d.Canonical(nil, stripSignatures)
}

// checkOrdered fails when Canonical's ordered walk and the sort of all
// paths disagree on body; it reports whether the ordered walk ran.
func checkOrdered(t testing.TB, body []byte) bool {
	t.Helper()
	d, err := Parse(body, Limits{})
	if err != nil {
		return false
	}
	defer d.Release()
	for _, strip := range []bool{false, true} {
		if got, want := d.Canonical(nil, strip), sortedCanonical(d, strip); !bytes.Equal(got, want) {
			t.Fatalf("%s\nordered walk %q\n  all paths  %q", body, got, want)
		}
	}
	return !d.wild
}

// randomDoc writes a document whose names mix the bytes the natural order
// treats specially: digits and zeros, bytes on either side of ':' and of
// the digits, NUL, long shared prefixes, and, rarely, what makes a name
// wild. Some objects are wide.
func randomDoc(r *rand.Rand, b *bytes.Buffer, depth int) {
	names := []string{"a", "a1", "a10", "a2", "a_b", "a-b", "a.b", "a/", "a0", "a0b", "0", "1", "10", "9", "ab",
		"A", "é", "a~", "a!", "a9b", "a10b", "x2y10", "x10y1", "frame_mode", "signature", "sum", "summ", "sum1",
		"operation", "operations", "operation1", "operation_", "sum_initial", "sum_converted", `a\u0000`,
		`a\u0000b`, "abcdefgh", "abcdefgh1", "abcdefgh10", "abcdefg9", "abcdefg", "abcdefghi"}
	wild := []string{"", "a:b", "a b", "007", "a01", `a\t`}
	const alphabet = "a0123_9-.~"
	switch k := r.IntN(10); {
	case depth > 4 || k < 4:
		b.WriteString([]string{`1`, `"v"`, `true`, `null`, `1.5`, `-0`, `""`}[r.IntN(7)])
	case k < 7:
		b.WriteByte('{')
		seen := map[string]bool{}
		n, below := r.IntN(6), depth+1
		if depth < 2 && r.IntN(8) == 0 {
			n, below = 20+r.IntN(60), depth+4 // wide, shallow below
		}
		for range n {
			name := names[r.IntN(len(names))]
			if r.IntN(3) == 0 {
				p := make([]byte, 1+r.IntN(10))
				for i := range p {
					p[i] = alphabet[r.IntN(len(alphabet))]
				}
				name = string(p)
			}
			if r.IntN(40) == 0 {
				name = wild[r.IntN(len(wild))]
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			if len(seen) > 1 {
				b.WriteByte(',')
			}
			b.WriteString(`"` + name + `":`)
			randomDoc(r, b, below)
		}
		b.WriteByte('}')
	default:
		b.WriteByte('[')
		for i, n := 0, r.IntN(13); i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			randomDoc(r, b, depth+1)
		}
		b.WriteByte(']')
	}
}

func TestCanonicalOrderedWalk(t *testing.T) {
	for _, v := range loadVectors(t) {
		checkOrdered(t, []byte(v.ParamsJSON))
		checkOrdered(t, []byte(v.RawBody))
	}
	checkOrdered(t, typicalCallback(t, "secret"))
	r := rand.New(rand.NewPCG(3, 4))
	ordered := 0
	for range 3000 {
		var b bytes.Buffer
		randomDoc(r, &b, 0)
		if checkOrdered(t, b.Bytes()) {
			ordered++
		}
	}
	t.Logf("%d of 3000 documents took the ordered walk", ordered)
	if ordered < 1000 {
		t.Fatalf("only %d documents took the ordered walk", ordered)
	}
	for _, name := range []string{"", "a:b", "a b", "a\\t", "007", "a01", "x0012"} {
		d, err := Parse([]byte(`{"`+name+`":1}`), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if !d.wild {
			t.Errorf("%q is taken as tame", name)
		}
		d.Release()
	}
	// Names added after parsing count too.
	d, err := Parse([]byte(`{"a":{"b":1}}`), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release()
	if d.wild {
		t.Fatal("a plain document taken as wild")
	}
	d.Set(d.Get(d.Root(), "a"), "b:", Number, "2")
	if !d.wild {
		t.Fatal("Set of a wild name leaves the document tame")
	}
}

// FuzzCanonicalOrdered: on every document the ordered walk accepts, it
// writes what the sort of all paths writes.
func FuzzCanonicalOrdered(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.ParamsJSON))
	}
	f.Add([]byte(`{"a":{"x":1},"a1":2,"a-":3,"a10":[{"b":1},2,3,4,5,6,7,8,9,10,11],"é":{"0":1,"10":2,"9":3}}`))
	f.Add([]byte(`{"a\u0000":{"b":1},"a":[1],"a0":2,"a/":{"c":0},"abcdefgh":{"x":1},"abcdefgh1":2,"abcdefg":{"y":[]},"\u0061b":3}`))
	f.Add(typicalCallback(f, "secret"))
	f.Fuzz(func(t *testing.T, body []byte) { checkOrdered(t, body) })
}

// A kid's word and digit test agree with the sort key's first 8 bytes,
// taken a byte at a time.
func TestKidSet(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const alphabet = "\x00\x01/09:a\x7f\x80\xff"
	for range 20000 {
		name := make([]byte, r.IntN(12))
		for i := range name {
			name[i] = alphabet[r.IntN(len(alphabet))]
		}
		for _, container := range []bool{false, true} {
			key := name
			if container {
				key = append(slices.Clip(name), ':')
			}
			var want kid
			want.plain = true
			for i, c := range key[:min(8, len(key))] {
				want.word |= uint64(c) << (56 - 8*i)
				want.plain = want.plain && !isDigit(c)
			}
			var got kid
			got.set(string(name), container, 2, 9, 7)
			if got.word != want.word || got.plain != want.plain || got.start != 2 || got.end != 9 || got.node != 7 {
				t.Fatalf("%q (container %v): %+v, want word %x plain %v", name, container, got, want.word, want.plain)
			}
		}
	}
}

func TestIsInt64Text(t *testing.T) {
	for _, s := range []string{"", "0", "210", "007", "-1", "+1", "1_0", "abc", "９", "999999999999999999",
		"9223372036854775807", "9223372036854775808", "-9223372036854775808", "12345678901234567890"} {
		_, err := strconv.ParseInt(s, 10, 64)
		if got := isInt64Text(s); got != (err == nil) {
			t.Errorf("%q: %v, ParseInt error %v", s, got, err)
		}
	}
}
