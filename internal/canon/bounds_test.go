package canon

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The work done on a body before its signature is checked is bounded by
// its size: at most allocPerByte bytes allocated per body byte, plus
// allocSlack. Where it goes: the node arena, 48 bytes a node and "0," is a
// node in two bytes (24); when a member name is wild, items and merge
// scratch, 24 bytes a value (12), and the canonical string, at most
// canonPerByte a byte, twice (item buffer and result: 16). The ordered walk
// of plain names writes the result only, and a 24-byte record a member
// (at least 6 bytes of body). NineByteWildKeyManyLeaves, which has all at
// once, measures 55, its plain twin 35; the slack is the 16 KiB canonical
// slack twice, and pools.
const (
	allocPerByte = 64
	allocSlack   = 128 << 10
	maxBody      = 1 << 20 // what a handler reads at most (max_body's default)
)

// shape builds a hostile body from a size parameter; larger n, larger body.
type shape struct {
	name string
	gen  func(n int) []byte
}

func nested(depth int, open, close string, inner []byte) []byte {
	var b bytes.Buffer
	for range depth {
		b.WriteString(open)
	}
	b.Write(inner)
	for range depth {
		b.WriteString(close)
	}
	return b.Bytes()
}

func repeatJoin(n int, item func(i int) string) []byte {
	var b bytes.Buffer
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(item(i))
	}
	return b.Bytes()
}

func zeros(n int) []byte { return repeatJoin(n, func(int) string { return "0" }) }

var bigKey = strings.Repeat("k", defaultMaxKey)

// hostileShapes are the worst bodies found for the canonical string and
// for the parser, each with the signature a callback carries.
var hostileShapes = []shape{
	{"LongKeyManyLeaves", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","%s":[%s]}`, bigKey, zeros(n))
	}},
	// A 9-byte key spends the whole canonical budget (16 bytes an item, for
	// 2 bytes of body) just as MaxLeaves is reached: the most memory a byte.
	{"NineByteKeyManyLeaves", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","kkkkkkkkk":[%s]}`, zeros(n))
	}},
	// The same with a space in the name: it is sorted as all paths.
	{"NineByteWildKeyManyLeaves", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","kkkk kkkk":[%s]}`, zeros(n))
	}},
	{"OverlongKey", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","%s":[%s]}`, strings.Repeat("k", 64<<10), zeros(n))
	}},
	{"DeepLongKeys", func(n int) []byte {
		inner := fmt.Appendf(nil, "[%s]", zeros(n))
		return fmt.Appendf(nil, `{"signature":"x","a":%s}`, nested(defaultMaxDepth-2, `{"`+bigKey+`":`, "}", inner))
	}},
	{"ArraysOfArrays", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","a":%s}`, nested(defaultMaxDepth-2, "[", "]", zeros(n)))
	}},
	{"ManyDeepChains", func(n int) []byte {
		chain := string(nested(defaultMaxDepth-2, "[", "]", []byte("0")))
		return fmt.Appendf(nil, `{"signature":"x","a":[%s]}`, repeatJoin(n, func(int) string { return chain }))
	}},
	{"ShortKeysDeep", func(n int) []byte {
		inner := fmt.Appendf(nil, "{%s}", repeatJoin(n, func(i int) string { return `"` + strconv.Itoa(i) + `":0` }))
		return fmt.Appendf(nil, `{"signature":"x","a":%s}`, nested(defaultMaxDepth-2, `{"a":`, "}", inner))
	}},
	{"ColonKeys", func(n int) []byte {
		colons := strings.Repeat(":", 256)
		return fmt.Appendf(nil, `{"signature":"x",%s}`, repeatJoin(n, func(i int) string { return `"` + colons + strconv.Itoa(i) + `":0` }))
	}},
	{"EscapedColonKeys", func(n int) []byte {
		colons := strings.Repeat(`\u003a`, defaultMaxKey/6-2)
		inner := fmt.Appendf(nil, "[%s]", zeros(n))
		return fmt.Appendf(nil, `{"signature":"x","a":%s}`, nested(defaultMaxDepth-2, `{"`+colons+`":`, "}", inner))
	}},
	{"ShortFloats", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","a":[%s]}`, repeatJoin(n, func(int) string { return "9e9" }))
	}},
	{"LongNumbers", func(n int) []byte {
		num := "1." + strings.Repeat("9", defaultMaxString-2)
		return fmt.Appendf(nil, `{"signature":"x","a":[%s]}`, repeatJoin(n, func(int) string { return num }))
	}},
	{"EscapedStrings", func(n int) []byte {
		s := `"` + strings.Repeat(`\n`, 1000) + `"`
		return fmt.Appendf(nil, `{"signature":"x","a":[%s]}`, repeatJoin(n, func(int) string { return s }))
	}},
	{"EmptyContainers", func(n int) []byte {
		return fmt.Appendf(nil, `{"signature":"x","a":[%s]}`, repeatJoin(n, func(i int) string { return "[]" }))
	}},
	// Whitespace is skipped by the natural compare: a path with a long run
	// of it, compared with paths that stop short of it, costs the run each
	// time. One such key in every run the merge sort starts with.
	{"WhitespaceKeys", func(n int) []byte {
		ws := strings.Repeat(" ", defaultMaxKey-8)
		return fmt.Appendf(nil, `{"signature":"x","k":{%s}}`, repeatJoin(n, func(i int) string {
			if i%64 == 31 {
				return `"x` + ws + strconv.Itoa(i) + `":0`
			}
			return `"x` + strconv.Itoa(i) + `":0`
		}))
	}},
}

// callbackWork is what the callback handler does with a body before the
// signature is checked.
func callbackWork(body, dst []byte) ([]byte, error) {
	d, err := Parse(body, Limits{})
	if err != nil {
		return dst, err
	}
	defer d.Release()
	_ = d.EmbeddedSignature()
	return d.Canonical(dst, true), nil
}

// checkNodeBound checks what Doc.grow relies on to size the arena once:
// a body holds at most one node more than its ',', '[' and '{', and than
// half its length.
func checkNodeBound(t testing.TB, d *Doc, body []byte) {
	t.Helper()
	delims := bytes.Count(body, []byte(",")) + bytes.Count(body, []byte("[")) + bytes.Count(body, []byte("{"))
	if n := len(d.nodes); n > delims+1 || n > len(body)/2+1 {
		t.Fatalf("%d nodes in %d bytes with %d delimiters", n, len(body), delims)
	}
}

// gateWork is what Gate does with a body before it forwards it signed.
func gateWork(body, dst []byte) ([]byte, error) {
	d, err := Parse(body, Limits{})
	if err != nil {
		return dst, err
	}
	defer d.Release()
	root := d.Root()
	d.Delete(root, "signature")
	if g := d.Object(root, "general"); g != None {
		d.Set(g, "project_id", Number, "238")
	}
	dst = d.Canonical(dst, false)
	return d.AppendJSON(make([]byte, 0, len(body)+128)), nil
}

// pageWork is what the Payment Page mode does with a JSON body: its
// top-level scalars, rendered, make the pairs to sign.
func pageWork(body, _ []byte) ([]byte, error) {
	d, err := Parse(body, Limits{})
	if err != nil {
		return nil, err
	}
	defer d.Release()
	var pairs [][2]string
	for n := d.First(d.Root()); n != None; n = d.Next(n) {
		switch d.Kind(n) {
		case Number:
			pairs = append(pairs, [2]string{d.Key(n), RenderNumber(d.Text(n))})
		case String, Bool, Null:
			pairs = append(pairs, [2]string{d.Key(n), d.Text(n)})
		}
	}
	return AppendPairs(nil, pairs), nil
}

// worstOf is the largest body of a shape that is accepted (or, if none
// is, the smallest), found by bisection on n, within the handler's body
// limit; and the next larger one.
func worstOf(s shape) (worst, next []byte) {
	lo, hi := 1, 1
	for len(s.gen(hi)) <= maxBody && hi < 1<<20 {
		hi *= 2
	}
	for lo+1 < hi { // gen(lo) fits and is accepted, or lo is 1
		m := (lo + hi) / 2
		body := s.gen(m)
		if _, err := callbackWork(body, nil); err != nil || len(body) > maxBody {
			hi = m
		} else {
			lo = m
		}
	}
	return s.gen(lo), s.gen(lo + 1)
}

// allocated is the bytes allocated by one work on body, with the pools
// emptied first so nothing is reused.
func allocated(work func(body, dst []byte) ([]byte, error), body []byte) (uint64, error) {
	runtime.GC() // twice: pooled objects survive one
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := work(body, nil)
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, err
}

// TestBoundsHostileShapes asserts its byte counts without -race only
// (.ci/run runs it so as well as under -race).
func TestBoundsHostileShapes(t *testing.T) {
	for _, s := range hostileShapes {
		t.Run(s.name, func(t *testing.T) {
			body, next := worstOf(s)
			for _, b := range [][]byte{body, next} {
				for mode, work := range map[string]func(body, dst []byte) ([]byte, error){
					"callback": callbackWork, "gate": gateWork, "page": pageWork,
				} {
					n, err := allocated(work, b)
					t.Logf("%-8s %7d bytes: allocated %9d (%.1f a byte), %v", mode, len(b), n, float64(n)/float64(len(b)), err)
					if limit := uint64(allocPerByte*len(b) + allocSlack); n > limit && !raceDetector {
						t.Errorf("%s: allocated %d bytes for a body of %d, over %d", mode, n, len(b), limit)
					}
				}
			}
			d, err := Parse(body, Limits{})
			if err != nil {
				return
			}
			defer d.Release()
			checkNodeBound(t, d, body)
			c := d.Canonical(nil, false)
			if len(c) > d.canon || d.canon > d.budget {
				t.Errorf("canonical string of %d bytes, estimated %d, budget %d", len(c), d.canon, d.budget)
			}
		})
	}
}

// The attack that started this: one 64 KiB key above 9,990 numbers.
func TestBoundsRefusesTheOriginalAttack(t *testing.T) {
	body := fmt.Appendf(nil, `{"project_id":1,"%s":[%s]}`, strings.Repeat("k", 64<<10), zeros(9990))
	if _, err := Parse(body, Limits{}); !errors.Is(err, errKeyTooLong) {
		t.Fatalf("err = %v, want errKeyTooLong", err)
	}
	body = fmt.Appendf(nil, `{"project_id":1,"%s":[%s]}`, bigKey, zeros(9990))
	if _, err := Parse(body, Limits{}); !errors.Is(err, errTooExpensive) || errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v, want errTooExpensive and not ErrMalformed", err)
	}
	// The same data under a short key is an ordinary body.
	body = fmt.Appendf(nil, `{"project_id":1,"k":[%s]}`, zeros(9990))
	if _, err := callbackWork(body, nil); err != nil {
		t.Fatal(err)
	}
}

// After a large body, the pools hold nothing large: the next small parse
// does not get a giant arena or canonical buffer.
func TestBoundsPoolsStaySmall(t *testing.T) {
	long := strings.Repeat("n", defaultMaxKey-8)
	bigs := [][]byte{ // each over one limit
		fmt.Appendf(nil, `{"k":[%s]}`, zeros(9000)),
		fmt.Appendf(nil, `{%s}`, repeatJoin(3000, func(i int) string { return `"k` + strconv.Itoa(i) + `":0` })),
		fmt.Appendf(nil, `{%s}`, repeatJoin(80, func(i int) string { return `"` + long + strconv.Itoa(i) + `":0` })),
		fmt.Appendf(nil, `{%s}`, repeatJoin(5000, func(i int) string { return `"k ` + strconv.Itoa(i) + `":0` })),
	}
	small := []byte(`{"a":1}`)
	for i := range 4 * runtime.GOMAXPROCS(0) {
		if _, err := callbackWork(bigs[i%len(bigs)], nil); err != nil {
			t.Fatal(err)
		}
		d, err := Parse(small, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if cap(d.nodes) > maxPooledNodes {
			t.Fatalf("a small parse got an arena of %d nodes", cap(d.nodes))
		}
		for _, n := range d.nodes[len(d.nodes):cap(d.nodes)] {
			if n.key != "" || n.text != "" {
				t.Fatal("a pooled arena still points into an earlier body")
			}
		}
		d.Release()
		c := getCanon()
		if cap(c.buf) > maxPooledBytes || cap(c.out) > maxPooledBytes || cap(c.path) > maxPooledBytes ||
			cap(c.keys) > maxPooledBytes || cap(c.items) > maxPooledItems || cap(c.scratch) > maxPooledItems ||
			cap(c.kids) > maxPooledItems/2 {
			t.Fatalf("a pooled canon kept %d bytes, %d items, %d members",
				cap(c.buf)+cap(c.out)+cap(c.path)+cap(c.keys), cap(c.items)+cap(c.scratch), cap(c.kids))
		}
		c.release()
	}
}

func TestBoundsKeyLimit(t *testing.T) {
	at := fmt.Appendf(nil, `{"%s":1}`, strings.Repeat("k", defaultMaxKey))
	over := fmt.Appendf(nil, `{"%s":1}`, strings.Repeat("k", defaultMaxKey+1))
	escaped := fmt.Appendf(nil, `{"%s":1}`, strings.Repeat(`\u006b`, defaultMaxKey/6+1))
	if _, err := Parse(at, Limits{}); err != nil {
		t.Fatalf("a key of MaxKey bytes: %v", err)
	}
	for _, b := range [][]byte{over, escaped} {
		if _, err := Parse(b, Limits{}); !errors.Is(err, errKeyTooLong) || errors.Is(err, ErrMalformed) {
			t.Fatalf("err = %v, want errKeyTooLong and not ErrMalformed", err)
		}
	}
	if _, err := Parse(over, Limits{MaxKey: defaultMaxKey + 1}); err != nil {
		t.Fatalf("MaxKey raised: %v", err)
	}
	// Values keep their own, larger limit.
	if _, err := Parse(fmt.Appendf(nil, `{"k":"%s"}`, strings.Repeat("v", 4*defaultMaxKey)), Limits{}); err != nil {
		t.Fatal(err)
	}
}

// errorDigits reduces an error message to its template: digits (positions,
// limits) become N. What is left must be one of ours, never the input's.
var errorDigits = regexp.MustCompile(`[0-9]+`)

var errorTemplates = func() map[string]bool {
	var all []string
	for _, m := range []string{
		"unexpected end of input", "data after the top-level value", "unexpected character",
		"expected a member name", "duplicate key", "expected ':'", "expected ',' or '}'",
		"expected ',' or ']'", "bad number", "control character in string", "unterminated string",
		"invalid UTF-8 in string", `bad \u escape`, "unpaired UTF-16 surrogate", "bad escape",
	} {
		all = append(all, "malformed JSON at byte 0: "+m)
	}
	for _, m := range []string{
		"JSON nested too deeply: more than N levels", "JSON has too many values: more than N",
		"JSON string too long: more than N bytes", "JSON string too long: a number of N bytes",
		"JSON member name too long: more than N bytes",
		"JSON flattens to too large a canonical string: over N bytes for a body of N",
	} {
		all = append(all, m)
	}
	set := make(map[string]bool, len(all))
	for _, m := range all {
		set[errorDigits.ReplaceAllString(m, "N")] = true
	}
	return set
}()

func checkErrorText(t testing.TB, err error) {
	t.Helper()
	if msg := errorDigits.ReplaceAllString(err.Error(), "N"); !errorTemplates[msg] {
		t.Fatalf("error %q is not one of the parser's own messages", err)
	}
}

func TestBoundsErrorsDoNotEchoInput(t *testing.T) {
	for _, in := range []string{
		`{"QZXW":1,"QZXW":2}`, `{"a":QZXW}`, `{"a":"\QZXW"}`, `{"a":1 QZXW}`, `{QZXW:1}`,
		`{"a" QZXW}`, `[1 QZXW]`, `{"a":1}QZXW`, `{"a":-QZXW}`, `{"a":"\uQZXW"}`, "{\"QZXW\xff\":1}",
		`{"a":"QZXW`, "{\"a\":\"QZXW\x01\"}", `{"` + strings.Repeat("Q", 2000) + `":1}`,
	} {
		_, err := Parse([]byte(in), Limits{})
		if err == nil {
			t.Fatalf("%q parsed", in)
		}
		if strings.Contains(err.Error(), "Q") {
			t.Errorf("%q: error echoes the input: %v", in, err)
		}
		checkErrorText(t, err)
	}
}

// The merge sort orders exactly as a stable sort with natCompare does.
func TestBoundsSortMatchesStableSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const alphabet = "a0123 9:\t0b_"
	for _, n := range []int{2, 31, 256, 257, 1000, 5000} {
		c := getCanon()
		for range n {
			p := make([]byte, r.IntN(12))
			for i := range p {
				p[i] = alphabet[r.IntN(len(alphabet))]
			}
			c.add(p, strconv.Itoa(len(c.items)))
		}
		want := slices.Clone(c.items)
		slices.SortStableFunc(want, func(a, b item) int { return natCompare(pathOf(c.buf, a), pathOf(c.buf, b)) })
		c.sort()
		if !slices.Equal(c.items, want) {
			t.Fatalf("%d items: merge sort differs from a stable sort", n)
		}
		c.release()
	}
}

// FuzzParseBounds: whatever the body, parsing never panics; errors are the
// parser's own words; work stays within the stated multiple of the body;
// accepted documents come back from AppendJSON with the same canonical
// string.
func FuzzParseBounds(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.ParamsJSON))
	}
	for _, s := range hostileShapes {
		if b := s.gen(3); len(b) < 8<<10 {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"a:b":{"":[1e5,-0,1.5E-7,{"":{}}]}," x":"\u003a"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := Parse(body, Limits{})
		if err != nil {
			checkErrorText(t, err)
			return
		}
		defer d.Release()
		if d.canon > d.budget {
			t.Fatalf("estimate %d over budget %d", d.canon, d.budget)
		}
		checkNodeBound(t, d, body)
		c1 := d.Canonical(nil, true)
		if len(d.Canonical(nil, false)) > d.canon {
			t.Fatalf("canonical string of %d bytes, estimated %d", len(c1), d.canon)
		}
		for n := range d.nodes {
			if d.nodes[n].kind == Number && len(RenderNumber(d.nodes[n].text)) > renderedBound(d.nodes[n].text) {
				t.Fatalf("%s renders longer than its bound", d.nodes[n].text)
			}
			if d.nodes[n].verbatim && RenderNumber(d.nodes[n].text) != d.nodes[n].text {
				t.Fatalf("%s taken as is, but renders as %s", d.nodes[n].text, RenderNumber(d.nodes[n].text))
			}
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _ = callbackWork(body, nil)
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > uint64(allocPerByte*len(body)+allocSlack) && !raceDetector {
			t.Fatalf("allocated %d bytes for a body of %d", n, len(body))
		}
		out := d.AppendJSON(nil)
		d2, err := Parse(out, Limits{})
		if errors.Is(err, errTooExpensive) && len(out) < len(body) {
			return // a compact rewrite has a smaller budget than a padded original
		}
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, out)
		}
		defer d2.Release()
		if c2 := d2.Canonical(nil, true); !bytes.Equal(c1, c2) {
			t.Fatalf("canonical changed after a round trip:\n%q\n%q", c1, c2)
		}
	})
}

// BenchmarkWorstShape is the time per body byte of each hostile shape at its
// worst accepted size, next to a typical callback, through what the
// callback handler does before and while verifying.
func BenchmarkWorstShape(b *testing.B) {
	k := NewKey("secret")
	run := func(name string, body []byte) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			buf := make([]byte, 0, 4096)
			for b.Loop() {
				d, err := Parse(body, Limits{})
				if err != nil {
					continue
				}
				sig := d.EmbeddedSignature()
				buf = d.Canonical(buf[:0], true)
				_ = k.Verify(buf, sig)
				d.Release()
			}
		})
	}
	run("Typical", typicalCallback(b, "secret"))
	for _, s := range hostileShapes {
		worst, _ := worstOf(s)
		run(s.name, worst)
	}
}
