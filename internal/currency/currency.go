// Package currency turns ecommpay's amounts, integers in a currency's
// minor unit, into the major units people read, by the currency's ISO 4217
// exponent: 1000 CNY is 10.00 CNY, 1000 JPY is 1000 JPY, 1000 KWD is
// 1.000 KWD.
package currency

import (
	"math/big"
	"strings"
)

// exponents lists the ISO 4217 currencies whose minor unit is not a
// hundredth of the major one (ISO 4217 list one, 2024). Every other code,
// known or not, has two decimals.
var exponents = map[string]int{
	// No minor unit.
	"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
	"PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
	// Thousandths.
	"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
	// Ten-thousandths (units of account).
	"CLF": 4, "UYW": 4,
}

// exponent is the number of decimals of code's minor unit: 0 for JPY, 3
// for KWD, 2 for most and for codes it does not know. Case does not matter.
func exponent(code string) int {
	if e, ok := exponents[strings.ToUpper(code)]; ok {
		return e
	}
	return 2
}

// Major writes an amount in minor units (an integer, as ecommpay sends
// it) in major units of code: Major("1000", "CNY") is "10.00". ok is false
// when minor is not an integer; the caller shows it as it came.
func Major(minor, code string) (major string, ok bool) {
	n, ok := new(big.Int).SetString(minor, 10)
	if !ok || strings.HasPrefix(minor, "+") {
		return "", false
	}
	return FormatMajor(n, code), true
}

// FormatMajor writes n minor units of code in major units.
func FormatMajor(n *big.Int, code string) string {
	exp := exponent(code)
	digits := new(big.Int).Abs(n).String()
	if exp > 0 {
		if len(digits) <= exp {
			digits = strings.Repeat("0", exp-len(digits)+1) + digits
		}
		digits = digits[:len(digits)-exp] + "." + digits[len(digits)-exp:]
	}
	if n.Sign() < 0 {
		return "-" + digits
	}
	return digits
}
