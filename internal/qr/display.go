package qr

import (
	"iter"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
)

// DisplayEntries yields the objects of a callback body's display_data
// array, where ecommpay puts what the customer is shown: qr_data entries
// and add_info ones such as "QR Code Timeout".
func DisplayEntries(d *canon.Doc) iter.Seq[int32] {
	return func(yield func(int32) bool) {
		list := d.Get(d.Root(), "display_data")
		if list == canon.None || d.Kind(list) != canon.Array {
			return
		}
		for e := d.First(list); e != canon.None; e = d.Next(e) {
			if d.Kind(e) == canon.Object && !yield(e) {
				return
			}
		}
	}
}
