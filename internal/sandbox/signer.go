package sandbox

import "github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"

// Signer is ecommpay's signature algorithm. The zero Signer in a Config
// stands for ModuleSigner; tests give an independent implementation to
// hold the module's against it.
type Signer struct {
	// Canonical returns the canonical string of a JSON object; with
	// stripSignatures every "signature" member, at any depth, is left out.
	Canonical func(body []byte, stripSignatures bool) (string, error)
	// CanonicalPairs returns the canonical string of flat parameters (a
	// Payment Page query), values already decoded.
	CanonicalPairs func(pairs [][2]string) string
	// Sign returns base64(HMAC-SHA512(secret, canonical)).
	Sign func(canonical, secret string) string
}

// ModuleSigner is the module's own signature implementation
// (internal/canon), the one its handlers sign and verify with.
func ModuleSigner() Signer {
	return Signer{
		Canonical: func(body []byte, strip bool) (string, error) {
			d, err := canon.Parse(body, canon.Limits{})
			if err != nil {
				return "", err
			}
			defer d.Release()
			return string(d.Canonical(nil, strip)), nil
		},
		CanonicalPairs: func(pairs [][2]string) string { return string(canon.AppendPairs(nil, pairs)) },
		Sign:           func(canonical, secret string) string { return canon.NewKey(secret).Sign([]byte(canonical)) },
	}
}

func (sg Signer) zero() bool {
	return sg.Canonical == nil && sg.CanonicalPairs == nil && sg.Sign == nil
}
