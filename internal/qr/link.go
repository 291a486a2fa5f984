package qr

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Hosted QR image links are signed, so any node can serve them without shared
// state and nobody can have the server render strings of their choosing:
//
//	<base>/<project>/<expires>/<tag>/<payload>.png
//
// project is path-escaped, expires is unix seconds, payload is base64url
// without padding, and tag is base64url of the first 128 bits of
// HMAC-SHA256(LinkKey(secret), length-framed project, expires, payload).
// Only the last four path segments are read, so any route prefix works.

// errLink reports a path that is not a well-formed hosted QR link.
var errLink = errors.New("ecommpay: malformed QR link")

const (
	tagBytes       = 16   // 128-bit tag
	maxPayloadB64  = 4096 // above the 2953-byte capacity of a version-40 symbol
	maxProjectPath = 256
)

var b64 = base64.RawURLEncoding.Strict()

// Link holds the fields of a parsed hosted QR link; it is not yet verified.
type Link struct {
	Project string
	Payload string
	Expires int64 // unix seconds
	Tag     string
}

// LinkKey derives the link-signing key from a project secret, so the secret
// itself never keys anything but the ecommpay signature.
func LinkKey(secret string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("ecommpay qr link v1"))
	return m.Sum(nil)
}

// MakeLink returns the absolute link under base (with or without a trailing
// slash) that serves payload's QR image for project until expires.
// project must not be empty.
func MakeLink(base string, key []byte, project, payload string, expires time.Time) string {
	exp := expires.Unix()
	return strings.TrimRight(base, "/") + "/" + url.PathEscape(project) + "/" +
		strconv.FormatInt(exp, 10) + "/" + linkTag(key, project, payload, exp) + "/" +
		b64.EncodeToString([]byte(payload)) + ".png"
}

// ParseLink reads a link from an escaped URL path (r.URL.EscapedPath()).
// It accepts only the canonical form MakeLink writes; it does not verify.
func ParseLink(escapedPath string) (Link, error) {
	var seg [4]string // project, expires, tag, payload.png
	rest := escapedPath
	for i := 3; i > 0; i-- {
		j := strings.LastIndexByte(rest, '/')
		if j < 0 {
			return Link{}, errLink
		}
		rest, seg[i] = rest[:j], rest[j+1:]
	}
	seg[0] = rest[strings.LastIndexByte(rest, '/')+1:]

	var l Link
	enc, ok := strings.CutSuffix(seg[3], ".png")
	if !ok || enc == "" || len(enc) > maxPayloadB64 {
		return Link{}, errLink
	}
	p, err := b64.DecodeString(enc)
	if err != nil || b64.EncodedLen(len(p)) != len(enc) { // the decoder skips \r and \n
		return Link{}, errLink
	}
	l.Payload = string(p)
	if len(seg[0]) > maxProjectPath {
		return Link{}, errLink
	}
	if l.Project, err = url.PathUnescape(seg[0]); err != nil || l.Project == "" ||
		url.PathEscape(l.Project) != seg[0] {
		return Link{}, errLink
	}
	if l.Expires, err = strconv.ParseInt(seg[1], 10, 64); err != nil ||
		strconv.FormatInt(l.Expires, 10) != seg[1] {
		return Link{}, errLink
	}
	if len(seg[2]) != b64.EncodedLen(tagBytes) {
		return Link{}, errLink
	}
	l.Tag = seg[2]
	return l, nil
}

// verifyLink reports in constant time whether tag signs project, payload
// and expires under key. It does not check the expiry; see Link.Valid.
func verifyLink(key []byte, project, payload string, expires int64, tag string) bool {
	if len(tag) != b64.EncodedLen(tagBytes) {
		return false
	}
	got, err := b64.DecodeString(tag)
	if err != nil || len(got) != tagBytes {
		return false
	}
	want := linkMAC(key, project, payload, expires)
	return hmac.Equal(got, want[:tagBytes])
}

// Valid reports whether l has not expired at now and its tag verifies under
// one of keys (several while a project secret is being rotated).
func (l Link) Valid(keys [][]byte, now time.Time) bool {
	if now.Unix() > l.Expires {
		return false
	}
	for _, k := range keys {
		if verifyLink(k, l.Project, l.Payload, l.Expires, l.Tag) {
			return true
		}
	}
	return false
}

func linkTag(key []byte, project, payload string, expires int64) string {
	return b64.EncodeToString(linkMAC(key, project, payload, expires)[:tagBytes])
}

// linkMAC frames every field with its length so no two inputs share a MAC input.
func linkMAC(key []byte, project, payload string, expires int64) []byte {
	m := hmac.New(sha256.New, key)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(project)))
	m.Write(n[:])
	m.Write([]byte(project))
	binary.BigEndian.PutUint64(n[:], uint64(expires))
	m.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(len(payload)))
	m.Write(n[:])
	m.Write([]byte(payload))
	return m.Sum(nil)
}
