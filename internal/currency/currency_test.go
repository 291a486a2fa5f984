package currency

import (
	"math/big"
	"testing"
)

func TestMajor(t *testing.T) {
	for _, c := range []struct{ minor, code, want string }{
		{"1000", "CNY", "10.00"},
		{"1000", "cny", "10.00"},
		{"5", "EUR", "0.05"},
		{"0", "USD", "0.00"},
		{"123456789012345678901234567890", "EUR", "1234567890123456789012345678.90"},
		{"1000", "JPY", "1000"},
		{"1000", "KRW", "1000"},
		{"1000", "KWD", "1.000"},
		{"7", "BHD", "0.007"},
		{"12345", "OMR", "12.345"},
		{"1", "JOD", "0.001"},
		{"1", "TND", "0.001"},
		{"1", "LYD", "0.001"},
		{"1", "IQD", "0.001"},
		{"12345", "CLF", "1.2345"},
		{"-250", "EUR", "-2.50"},
		{"-2", "KWD", "-0.002"},
		{"1000", "", "10.00"},    // unknown: two decimals
		{"1000", "XYZ", "10.00"}, // unknown: two decimals
		{"007", "EUR", "0.07"},
	} {
		got, ok := Major(c.minor, c.code)
		if !ok || got != c.want {
			t.Errorf("Major(%q, %q) = %q, %v; want %q", c.minor, c.code, got, ok, c.want)
		}
	}
	for _, bad := range []string{"", "10.5", "1e3", "=1+1", " 10", "+10", "ten"} {
		if got, ok := Major(bad, "EUR"); ok {
			t.Errorf("Major(%q) = %q, ok; want not ok", bad, got)
		}
	}
}

func TestFormatMajorSum(t *testing.T) {
	sum := new(big.Int)
	for _, s := range []string{"1999", "1", "100000"} {
		n, _ := new(big.Int).SetString(s, 10)
		sum.Add(sum, n)
	}
	if got := FormatMajor(sum, "EUR"); got != "1020.00" {
		t.Fatalf("sum = %s, want 1020.00", got)
	}
}
