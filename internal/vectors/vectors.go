// Package vectors loads the signature conformance cases,
// testdata/signature-vectors.json (produced by running ecommpay's official
// SDKs; the PHP SDK's result is canonical), for the tests of every package
// that signs or verifies. Tests only.
package vectors

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// Vector is one case.
type Vector struct {
	Name   string `json:"name"`
	Type   string `json:"type"` // "sign" or "callback" ("header" cases are left out)
	Secret string `json:"secret"`
	// A "sign" case: the object, its canonical string and signature.
	ParamsJSON string `json:"params_json"`
	Canonical  string `json:"canonical"`
	Signature  string `json:"signature"`
	// A "callback" case: the body as received, whether it verifies, the
	// signature it carries and, for a tampered one, the canonical string
	// of what arrived.
	RawBody       string `json:"raw_body"`
	ExpectValid   bool   `json:"expect_valid"`
	Embedded      string `json:"embedded_signature"`
	ReceivedCanon string `json:"received_canonical"`
}

// Counts of the cases Load returns, so that a test can tell it ran all.
const (
	SignCases     = 42
	CallbackCases = 12
)

// Path is the file's path, wherever the test runs from.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "signature-vectors.json")
}

// Load reads the "sign" and "callback" cases.
func Load() ([]Vector, error) {
	raw, err := os.ReadFile(Path())
	if err != nil {
		return nil, err
	}
	var all []Vector
	if err := json.Unmarshal(raw, &all); err != nil {
		return nil, fmt.Errorf("%s: %w", Path(), err)
	}
	var out []Vector
	sign, callback := 0, 0
	for _, v := range all {
		switch v.Type {
		case "sign":
			sign++
		case "callback":
			callback++
		default:
			continue
		}
		out = append(out, v)
	}
	if sign != SignCases || callback != CallbackCases {
		return nil, fmt.Errorf("%s: %d sign and %d callback cases, want %d and %d", Path(), sign, callback, SignCases, CallbackCases)
	}
	return out, nil
}
