package canon

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
)

// isStop is what str's fast scan stops at, a byte at a time.
func isStop(c byte) bool { return c == '"' || c == '\\' || c < 0x20 }

// The word-at-a-time marks find exactly the first stop, whatever the
// bytes around it: every byte value in every position, among bytes that
// carry or borrow across it.
func TestStopsFindsTheFirstStop(t *testing.T) {
	near := []byte{0, 1, 0x1f, 0x20, 0x21, '"', '"' + 1, '\\', '\\' + 1, 0x7f, 0x80, 0x81, 0xa2, 0xdc, 0xfe, 0xff}
	r := rand.New(rand.NewPCG(5, 6))
	var w [8]byte
	check := func() {
		x := binary.LittleEndian.Uint64(w[:])
		want := 8
		for i, c := range w {
			if isStop(c) {
				want = i
				break
			}
		}
		got := 8
		if m := stops(x); m != 0 {
			got = bits.TrailingZeros64(m) / 8
		}
		if got != want {
			t.Fatalf("% x: first stop at %d, marks say %d", w, want, got)
		}
	}
	for pos := range 8 {
		for v := range 256 {
			for range 64 {
				for i := range w {
					w[i] = near[r.IntN(len(near))]
				}
				w[pos] = byte(v)
				check()
			}
		}
	}
	for range 1 << 20 {
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		check()
	}
}

// Strings of every length up to a few words, with a stop, an invalid
// byte or a multi-byte rune at every offset, parse as encoding/json says.
func TestStrEveryOffset(t *testing.T) {
	for n := range 20 {
		for at := range n + 1 {
			for _, ins := range []string{`\"`, `\\`, `\u00e9`, "\n", "\x01", "\xff", "\xc3\xa9", "\xc3", "é", `"`} {
				s := strings.Repeat("a", at) + ins + strings.Repeat("b", n-at)
				body := `["` + s + `"]`
				d, err := Parse([]byte(body), Limits{})
				var want []string
				werr := json.Unmarshal([]byte(body), &want)
				if (err == nil) != (werr == nil && strings.ToValidUTF8(body, "\uFFFD") == body) {
					t.Fatalf("%q: err %v, encoding/json %v", body, err, werr)
				}
				if err != nil {
					if !errors.Is(err, ErrMalformed) {
						t.Fatalf("%q: %v", body, err)
					}
					continue
				}
				if got := d.Text(d.First(d.Root())); got != want[0] {
					t.Fatalf("%q: got %q, want %q", body, got, want[0])
				}
				d.Release()
			}
		}
	}
}

// Member names of every length up to a few words, with what can make a
// name wild (or look so) at every offset: the one-pass scan agrees with
// tameKey, and names parse as encoding/json says.
func TestNameEveryOffset(t *testing.T) {
	for n := range 20 {
		for at := range n + 1 {
			for _, ins := range []string{"", ":", " ", "0", "00", "01", "10", "a0", "9", `\u0030`, `\u003a`, "é", "\xff", `\"`, "\t", `\t`} {
				name := strings.Repeat("a", at) + ins + strings.Repeat("b", n-at)
				body := `{"` + name + `":1}`
				d, err := Parse([]byte(body), Limits{})
				var want map[string]int
				werr := json.Unmarshal([]byte(body), &want)
				if (err == nil) != (werr == nil && strings.ToValidUTF8(body, "\uFFFD") == body) {
					t.Fatalf("%q: err %v, encoding/json %v", body, err, werr)
				}
				if err != nil {
					continue
				}
				key := d.Key(d.First(d.Root()))
				if _, ok := want[key]; !ok || len(want) != 1 {
					t.Fatalf("%q: name %q, encoding/json %q", body, key, want)
				}
				if d.wild != !tameKey(key) {
					t.Fatalf("%q: wild %v, tameKey %v", body, d.wild, tameKey(key))
				}
				d.Release()
			}
		}
	}
}

// TextAt gives a scalar's text along a path of keys, and "" for a missing
// key, an object, an array or a path through a non-object.
func TestTextAt(t *testing.T) {
	d, err := ParseString(`{"general":{"signature":"c2ln","n":12.50},"a":[1],"s":"x"}`, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release()
	for _, c := range []struct {
		path []string
		want string
	}{
		{[]string{"general", "signature"}, "c2ln"},
		{[]string{"general", "n"}, "12.50"},
		{[]string{"general"}, ""},
		{[]string{"a"}, ""},
		{[]string{"s", "x"}, ""},
		{[]string{"nope", "x"}, ""},
	} {
		if got := d.TextAt(d.Root(), c.path...); got != c.want {
			t.Errorf("TextAt(%q) = %q, want %q", c.path, got, c.want)
		}
	}
}
