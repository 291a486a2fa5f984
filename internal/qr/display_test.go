package qr

import (
	"slices"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
)

// Only display_data's objects are yielded, in order; a body without the
// array, or with something else under its name, yields nothing.
func TestDisplayEntries(t *testing.T) {
	for body, want := range map[string][]string{
		`{"display_data":[{"type":"qr_data","data":"weixin://x"},"text",7,{"type":"add_info","title":"QR Code Timeout","data":"60"}]}`: {"qr_data", "add_info"},
		`{"display_data":{"type":"qr_data"}}`:               nil,
		`{"payment":{"display_data":[{"type":"qr_data"}]}}`: nil,
		`[]`: nil,
	} {
		d, err := canon.ParseString(body, canon.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for e := range DisplayEntries(d) {
			got = append(got, d.TextAt(e, "type"))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", body, got, want)
		}
		for range DisplayEntries(d) {
			break // stopping early must not panic
		}
		d.Release()
	}
}
