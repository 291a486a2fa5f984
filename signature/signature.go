// Package signature is ecommpay's request signature for Go programs,
// with or without Caddy: the canonical string, signing, checking a
// callback, signing a Gate request body and a Payment Page query. It is
// the implementation the caddy-ecommpay handlers use.
//
// The canonical string flattens a JSON object (or a flat parameter list)
// into "path:value" items, nested keys joined with ':', sorts them by path
// in PHP's natural order and joins them with ';'; "frame_mode" is never
// signed, and a callback's own "signature" members are left out. The
// signature is base64(HMAC-SHA512(secret, canonical string)).
// docs/signature.md gives the rules in full, with the conformance vectors.
package signature

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
)

// Errors a caller can test with errors.Is.
var (
	// ErrMalformed: the body is not a JSON object the parser accepts
	// (strict RFC 8259, no duplicate names, within generous size limits).
	ErrMalformed = errors.New("signature: not a well-formed JSON object")
	// ErrNoSignature: the callback carries no signature that could be one
	// (a base64 HMAC-SHA512 in "signature" or "general.signature").
	ErrNoSignature = errors.New("signature: no signature in the callback")
	// ErrMismatch: the signature does not match the body with this secret.
	ErrMismatch = errors.New("signature: does not match")
	// ErrNotCallback: the signature matches, but the body has no
	// callback's shape: a signed Payment Page query, which customers see,
	// replayed as a callback.
	ErrNotCallback = errors.New("signature: signed, but not a callback")
	// ErrParam: a Payment Page parameter that cannot be signed (a ';' in
	// it, a ':' in its name, a name given twice, or "signature").
	ErrParam = errors.New("signature: parameter cannot be signed")
)

// parse parses body as a JSON object; the caller releases the Doc.
func parse(body []byte) (*canon.Doc, error) {
	d, err := canon.Parse(body, canon.Limits{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if d.Kind(d.Root()) != canon.Object {
		d.Release()
		return nil, fmt.Errorf("%w: not an object", ErrMalformed)
	}
	return d, nil
}

// Canonical is the canonical string of a JSON object to sign, such as a
// Gate request: every member but "frame_mode", numbers as PHP renders
// them.
func Canonical(body []byte) (string, error) {
	d, err := parse(body)
	if err != nil {
		return "", err
	}
	defer d.Release()
	return string(d.Canonical(nil, false)), nil
}

// CallbackCanonical is the canonical string of a callback body, every
// "signature" member left out, and the signature the body carries: the
// top-level "signature", else "general.signature" ("" when neither is a
// string).
func CallbackCanonical(body []byte) (canonical, signature string, err error) {
	d, err := parse(body)
	if err != nil {
		return "", "", err
	}
	defer d.Release()
	return string(d.Canonical(nil, true)), d.EmbeddedSignature(), nil
}

// Sign is the signature of a canonical string: base64(HMAC-SHA512).
func Sign(canonical, secret string) string {
	return canon.NewKey(secret).Sign([]byte(canonical))
}

// VerifyCallback checks a callback body as the handler does before it
// forwards one: nil when its signature is secret's signature of the body
// and the body has a callback's shape; else an error that is
// ErrMalformed, ErrNoSignature, ErrMismatch or ErrNotCallback.
func VerifyCallback(body []byte, secret string) error {
	d, err := parse(body)
	if err != nil {
		return err
	}
	defer d.Release()
	sig := d.EmbeddedSignature()
	switch {
	case !canon.WellFormedSignature(sig):
		return ErrNoSignature
	case !canon.NewKey(secret).Verify(d.Canonical(nil, true), sig):
		return ErrMismatch
	case !d.CallbackShaped():
		return ErrNotCallback
	}
	return nil
}

// SignGate returns a Gate request body signed as the handler signs it:
// any "signature" and "general.signature" removed, the signature of the
// rest put in general.signature (general is created when absent). Members
// keep their order and numbers their literals as sent.
func SignGate(body []byte, secret string) ([]byte, error) {
	d, err := parse(body)
	if err != nil {
		return nil, err
	}
	defer d.Release()
	general := d.Object(d.Root(), "general")
	if general == canon.None {
		return nil, fmt.Errorf("%w: general is not an object", ErrMalformed)
	}
	canon.NewKey(secret).SignGate(d, general)
	return d.AppendJSON(make([]byte, 0, len(body)+128)), nil
}

// SignPaymentPage is the signature of a Payment Page query: params are
// the decoded parameters, one value each, without "signature";
// "frame_mode" is sent but never signed. Add it to the query as
// "signature". Names with ':' and any ';' are refused (ErrParam), as the
// handler refuses them: they would make the signed string ambiguous.
func SignPaymentPage(params url.Values, secret string) (string, error) {
	pairs := make([][2]string, 0, len(params))
	// Sorted first: names the natural order ties ("a 1", "a1") keep
	// one order whatever the map's.
	for _, name := range slices.Sorted(maps.Keys(params)) {
		values := params[name]
		if len(values) != 1 {
			return "", fmt.Errorf("%w: %q given %d times", ErrParam, name, len(values))
		}
		if err := canon.CheckPair(name, values[0]); err != nil {
			return "", fmt.Errorf("%w: %w", ErrParam, err)
		}
		pairs = append(pairs, [2]string{name, values[0]})
	}
	return canon.NewKey(secret).Sign(canon.AppendPairs(nil, pairs)), nil
}
