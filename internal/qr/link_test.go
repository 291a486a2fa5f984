package qr

import (
	"bytes"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	linkKey   = LinkKey("project-secret")
	linkOther = LinkKey("another-secret")
	linkNow   = time.Unix(1_795_000_000, 0)
	linkExp   = linkNow.Add(15 * time.Minute)
)

func parseLink(t *testing.T, link string) Link {
	t.Helper()
	u, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ParseLink(u.EscapedPath())
	if err != nil {
		t.Fatalf("ParseLink(%q): %v", u.EscapedPath(), err)
	}
	return l
}

func TestQRLinkRoundTrip(t *testing.T) {
	for _, base := range []string{"https://pay.example.com/qr", "https://pay.example.com/qr/", "https://pay.example.com"} {
		for name, payload := range qrPayloads {
			for _, project := range []string{"1234", "shop/eu ä"} {
				link := MakeLink(base, linkKey, project, payload, linkExp)
				if !strings.HasPrefix(link, strings.TrimRight(base, "/")+"/") || strings.Contains(link[len("https://"):], "//") {
					t.Fatalf("link %q not under %q", link, base)
				}
				l := parseLink(t, link)
				if l.Project != project || l.Payload != payload || l.Expires != linkExp.Unix() {
					t.Fatalf("%s: parsed %+v", name, l)
				}
				if !l.Valid([][]byte{linkKey}, linkNow) {
					t.Fatalf("%s: valid link rejected", name)
				}
			}
		}
	}
	link := MakeLink("https://pay.example.com/qr", linkKey, "1234", qrWeChat, linkExp)
	if len(link) > 140 {
		t.Errorf("WeChat link is %d chars: %s", len(link), link)
	}
	// A handler under a stripped route prefix sees only the tail.
	u, _ := url.Parse(link)
	tail := strings.TrimPrefix(u.EscapedPath(), "/qr")
	if l, err := ParseLink(tail); err != nil || !l.Valid([][]byte{linkKey}, linkNow) {
		t.Fatalf("tail %q: %v", tail, err)
	}
	if l, err := ParseLink(strings.TrimPrefix(tail, "/")); err != nil || !l.Valid([][]byte{linkKey}, linkNow) {
		t.Fatalf("relative tail: %v", err)
	}
}

func TestQRLinkRejects(t *testing.T) {
	l := parseLink(t, MakeLink("https://h/qr", linkKey, "1234", qrAlipay, linkExp))
	keys := [][]byte{linkKey}
	flip := func(s string, i int) string { // swap one base64url character
		b := []byte(s)
		b[i] = "AB"[min(strings.IndexByte("AB", b[i])+1, 1)]
		return string(b)
	}
	for name, bad := range map[string]Link{
		"forged tag":      {l.Project, l.Payload, l.Expires, flip(l.Tag, 0)},
		"forged tag end":  {l.Project, l.Payload, l.Expires, flip(l.Tag, 20)},
		"changed payload": {l.Project, l.Payload + "x", l.Expires, l.Tag},
		"changed project": {"1235", l.Payload, l.Expires, l.Tag},
		"changed expiry":  {l.Project, l.Payload, l.Expires + 3600, l.Tag},
		"empty tag":       {l.Project, l.Payload, l.Expires, ""},
		"short tag":       {l.Project, l.Payload, l.Expires, l.Tag[:20]},
		"newline in tag":  {l.Project, l.Payload, l.Expires, l.Tag[:10] + "\n" + l.Tag[10:]},
	} {
		if bad.Valid(keys, linkNow) {
			t.Errorf("%s: accepted", name)
		}
	}
	if l.Valid([][]byte{linkOther}, linkNow) || l.Valid(nil, linkNow) {
		t.Error("accepted under the wrong key")
	}
	if !l.Valid([][]byte{linkOther, linkKey}, linkNow) {
		t.Error("rejected during key rotation")
	}
	if !l.Valid(keys, linkExp) {
		t.Error("rejected in its last second")
	}
	if l.Valid(keys, linkExp.Add(time.Second)) {
		t.Error("accepted after expiry")
	}
	// The project secret itself is not the tag key.
	if verifyLink([]byte("project-secret"), l.Project, l.Payload, l.Expires, l.Tag) {
		t.Error("raw secret verifies")
	}
}

func TestQRLinkKey(t *testing.T) {
	if !bytes.Equal(LinkKey("s"), LinkKey("s")) || bytes.Equal(LinkKey("s"), LinkKey("t")) || len(LinkKey("s")) != 32 {
		t.Fatal("LinkKey is not a deterministic 32-byte derivation")
	}
}

func TestParseQRLinkMalformed(t *testing.T) {
	good := parseLink(t, MakeLink("https://h/qr", linkKey, "1234", "hi", linkExp))
	exp := strconv.FormatInt(good.Expires, 10)
	for _, p := range []string{
		"", "/", "/qr", "/a/b/c", "1234/" + exp + "/" + good.Tag,
		"/1234/" + exp + "/" + good.Tag + "/aGk",              // no .png
		"/1234/" + exp + "/" + good.Tag + "/aGk=.png",         // padding
		"/1234/" + exp + "/" + good.Tag + "/aGl.png",          // non-canonical trailing bits
		"/1234/" + exp + "/" + good.Tag + "/.png",             // empty payload
		"/1234/" + exp + "/" + good.Tag + "/aG\nk.png",        // newline the decoder would skip
		"/1234/" + exp + "/" + good.Tag + "/a+k.png",          // not base64url
		"/1234/0" + exp + "/" + good.Tag + "/aGk.png",         // leading zero
		"/1234/+" + exp + "/" + good.Tag + "/aGk.png",         // sign
		"/1234/" + exp + "/" + good.Tag + "A/aGk.png",         // long tag
		"/1234/" + exp + "/" + good.Tag[:21] + "/aGk.png",     // short tag
		"/%31234/" + exp + "/" + good.Tag + "/aGk.png",        // non-canonical escape
		"//" + exp + "/" + good.Tag + "/aGk.png",              // empty project
		"/%zz/" + exp + "/" + good.Tag + "/aGk.png",           // bad escape
		"/1234/" + exp + "/" + good.Tag + "/aGk.png/",         // trailing slash
		"/1234/99999999999999999999/" + good.Tag + "/aGk.png", // overflow
		"/1234/" + exp + "/" + good.Tag + "/" + strings.Repeat("A", maxPayloadB64+4) + ".png",
	} {
		if l, err := ParseLink(p); err == nil {
			t.Errorf("ParseLink(%q) = %+v", p, l)
		}
	}
	if _, err := ParseLink("/1234/" + exp + "/" + good.Tag + "/aGk.png"); err != nil {
		t.Fatalf("control case: %v", err)
	}
}

func FuzzParseQRLink(f *testing.F) {
	for _, p := range qrPayloads {
		u, _ := url.Parse(MakeLink("https://h/qr/", linkKey, "1234", p, linkExp))
		f.Add(u.EscapedPath())
	}
	u, _ := url.Parse(MakeLink("", linkKey, "a/b c", "x", time.Unix(-5, 0)))
	f.Add(u.EscapedPath())
	f.Add("/1234/1/AAAAAAAAAAAAAAAAAAAAAA/aGk.png")
	f.Fuzz(func(t *testing.T, path string) {
		l, err := ParseLink(path)
		if err != nil {
			return
		}
		// Parsing is canonical: re-making the link gives back the same tail.
		tail := "/" + url.PathEscape(l.Project) + "/" + strconv.FormatInt(l.Expires, 10) + "/" +
			l.Tag + "/" + b64.EncodeToString([]byte(l.Payload)) + ".png"
		if !strings.HasSuffix("/"+path, tail) {
			t.Fatalf("%q parsed to %+v, which writes %q", path, l, tail)
		}
		ok := verifyLink(linkKey, l.Project, l.Payload, l.Expires, l.Tag)
		if ok != (l.Tag == linkTag(linkKey, l.Project, l.Payload, l.Expires)) {
			t.Fatalf("verify=%v disagrees with the tag for %+v", ok, l)
		}
		if ok && verifyLink(linkOther, l.Project, l.Payload, l.Expires, l.Tag) {
			t.Fatalf("%+v verifies under two keys", l)
		}
	})
}
