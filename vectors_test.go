package ecommpay

import (
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/vectors"
)

// vector is one conformance case (testdata/signature-vectors.json).
type vector = vectors.Vector

func loadVectors(tb testing.TB) []vector {
	tb.Helper()
	vs, err := vectors.Load()
	if err != nil {
		tb.Fatal(err)
	}
	return vs
}

// canonicalPairs is the canonical string of Payment Page parameters.
func canonicalPairs(pairs [][2]string) string { return string(canon.AppendPairs(nil, pairs)) }
