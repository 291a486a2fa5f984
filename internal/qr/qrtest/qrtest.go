// Package qrtest reads QR images back in tests, with gozxing (a decoder
// independent of the encoder that made them).
package qrtest

import (
	"bytes"
	"image/png"
	"testing"

	"github.com/makiuchi-d/gozxing"
	zxqr "github.com/makiuchi-d/gozxing/qrcode"
)

// Decode returns the text of the QR symbol in the PNG b. A PNG that does
// not decode fails the test at once; an image without a readable symbol
// is reported as an error and gives "".
func Decode(t testing.TB, b []byte) string {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := zxqr.NewQRCodeReader().Decode(bmp, nil)
	if err != nil {
		t.Errorf("gozxing: %v", err)
		return ""
	}
	return res.GetText()
}
