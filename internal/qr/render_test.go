package qr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr/qrtest"
)

const (
	qrWeChat  = "weixin://wxpay/bizpayurl?pr=dMrSpJG"
	qrAlipay  = "https://qr.alipay.com/bax03431ljhokirwl38f00a7"
	qrChinese = "微信支付：请使用微信扫一扫完成付款。订单号 20261123-0042 金额 ¥128.00"
)

// qrURL300 is a 300-character https URL.
var qrURL300 = func() string {
	s := "https://pay.example.com/checkout/complete?project=1234&order=20261123-0042&return="
	for i := 0; len(s) < 300; i++ {
		s += string(rune('a' + i%26))
	}
	return s
}()

// qrEMVCo is a merchant-presented EMVCo payload with a Chinese merchant
// name in the alternate-language template (64) and a valid CRC (63).
var qrEMVCo = func() string {
	tlv := func(id, v string) string { return fmt.Sprintf("%s%02d%s", id, utf8.RuneCountInString(v), v) }
	s := tlv("00", "01") + tlv("01", "12") +
		tlv("26", tlv("00", "com.alipay.plus")+tlv("01", "bax03431ljhokirwl38f00a7")+tlv("02", "M20261123004200000001")) +
		tlv("52", "5812") + tlv("53", "156") + tlv("54", "128.00") + tlv("58", "CN") +
		tlv("59", "ECOMMPAY DEMO RESTAURANT") + tlv("60", "SHANGHAI") +
		tlv("62", tlv("01", "20261123-0042")+tlv("05", "ORDER-0042-REF")+tlv("07", "POS-07")) +
		tlv("64", tlv("00", "ZH")+tlv("01", "上海示例餐饮有限公司")+tlv("02", "上海")) + "6304"
	crc := uint16(0xffff) // CRC-16/CCITT-FALSE as EMVCo specifies
	for _, b := range []byte(s) {
		crc ^= uint16(b) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return s + fmt.Sprintf("%04X", crc)
}()

var qrPayloads = map[string]string{
	"wechat": qrWeChat, "alipay": qrAlipay, "url300": qrURL300, "chinese": qrChinese, "emvco": qrEMVCo,
}

func TestQRFixtures(t *testing.T) {
	if n := len(qrURL300); n != 300 {
		t.Fatalf("url300 has %d chars", n)
	}
	if n := utf8.RuneCountInString(qrEMVCo); n < 200 || n > 260 {
		t.Fatalf("emvco has %d chars", n)
	}
}

func TestRenderQRRoundTrip(t *testing.T) {
	type tc struct {
		name, payload string
		opt           Options
	}
	var cases []tc
	for name, p := range qrPayloads {
		for _, size := range []int{0, 512} {
			cases = append(cases, tc{fmt.Sprintf("%s/%d", name, size), p, Options{Size: size}})
		}
	}
	for _, lv := range []byte("LMQH") {
		for _, name := range []string{"alipay", "emvco"} {
			cases = append(cases, tc{fmt.Sprintf("%s/level-%c", name, lv), qrPayloads[name], Options{Level: lv}})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := Render(c.payload, c.opt)
			if err != nil {
				t.Fatal(err)
			}
			checkQRImage(t, b, c.opt)
			if got := qrtest.Decode(t, b); got != c.payload {
				t.Errorf("gozxing read %q", got)
			}
			if got := zbarDecode(t, b); got != c.payload {
				t.Errorf("zbarimg read %q", got)
			}
		})
	}
}

// Numeric and alphanumeric payloads take the encoder's compact modes.
func TestRenderQRCompactModes(t *testing.T) {
	for _, p := range []string{"20261123004200000001", "HTTPS://QR.ALIPAY.COM/BAX03431LJHOKIRWL38F00A7"} {
		b, err := Render(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := qrtest.Decode(t, b); got != p {
			t.Errorf("gozxing read %q, want %q", got, p)
		}
		if got := zbarDecode(t, b); got != p {
			t.Errorf("zbarimg read %q, want %q", got, p)
		}
	}
}

func TestRenderQRSmallSize(t *testing.T) {
	// 1 px per module plus quiet zone exceeds 40 px: the image grows instead.
	opt := Options{Size: 40}
	b, err := Render(qrURL300, opt)
	if err != nil {
		t.Fatal(err)
	}
	if scale, _ := checkQRImage(t, b, opt); scale != 1 {
		t.Fatalf("scale %d, want 1", scale)
	}
}

func TestRenderQRErrors(t *testing.T) {
	for _, c := range []struct {
		payload string
		opt     Options
		want    error
	}{
		{"", Options{}, errEmpty},
		{strings.Repeat("x", 8000), Options{Level: 'H'}, errTooLong},
		{strings.Repeat("x", 1274), Options{Level: 'H'}, errTooLong}, // v40-H holds 1273 bytes
		{strings.Repeat("x", 2954), Options{Level: 'L'}, errTooLong}, // v40-L holds 2953 bytes
		{qrWeChat, Options{Level: 'X'}, errLevel},
		{qrWeChat, Options{Size: -1}, errSize},
		{qrWeChat, Options{Size: maxSize + 1}, errSize},
	} {
		if _, err := Render(c.payload, c.opt); !errors.Is(err, c.want) {
			t.Errorf("Render(%d bytes, %+v) = %v, want %v", len(c.payload), c.opt, err, c.want)
		}
	}
	for _, c := range []struct {
		n     int
		level byte
	}{{1273, 'H'}, {2953, 'L'}} {
		if _, err := Render(strings.Repeat("x", c.n), Options{Level: c.level}); err != nil {
			t.Errorf("%d bytes at %c: %v", c.n, c.level, err)
		}
	}
}

func TestParseQRLevel(t *testing.T) {
	for in, want := range map[string]byte{"L": 'L', "m": 'M', "Q": 'Q', "h": 'H'} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %c, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "X", "LM", "medium", " M"} {
		if _, err := ParseLevel(in); !errors.Is(err, errLevel) {
			t.Errorf("ParseLevel(%q) = %v, want errLevel", in, err)
		}
	}
}

// checkQRImage asserts the PNG format and geometry and returns the px per
// module and the symbol side in modules.
func checkQRImage(t *testing.T, b []byte, opt Options) (scale, dim int) {
	t.Helper()
	if len(b) < 33 || string(b[12:16]) != "IHDR" {
		t.Fatalf("no IHDR chunk")
	}
	w, h := int(binary.BigEndian.Uint32(b[16:])), int(binary.BigEndian.Uint32(b[20:]))
	if b[24] != 1 || b[25] != 0 || b[28] != 0 {
		t.Fatalf("IHDR depth %d colour %d interlace %d, want 1-bit grey, not interlaced", b[24], b[25], b[28])
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := img.(*image.Gray)
	if !ok || g.Bounds() != image.Rect(0, 0, w, h) || w != h {
		t.Fatalf("decoded %T %v, IHDR %dx%d", img, img.Bounds(), w, h)
	}
	dark := func(x, y int) bool { return g.GrayAt(x, y).Y < 128 }

	// Bounding box of dark pixels is the symbol.
	box := image.Rectangle{Min: image.Pt(w, w)}
	for y := range w {
		for x := range w {
			if dark(x, y) {
				box = box.Union(image.Rect(x, y, x+1, y+1))
			}
		}
	}
	// The top-left finder's top edge is a run of 7 dark modules.
	run := 0
	for x := box.Min.X; x < box.Max.X && dark(x, box.Min.Y); x++ {
		run++
	}
	if run%7 != 0 || box.Dx() != box.Dy() || box.Dx()%(run/7) != 0 {
		t.Fatalf("finder run %d px, symbol box %v", run, box)
	}
	scale, dim = run/7, box.Dx()/(run/7)
	if dim < 21 || dim > 177 || (dim-17)%4 != 0 {
		t.Fatalf("symbol is %d modules", dim)
	}
	size := opt.Size
	if size == 0 {
		size = defaultSize
	}
	if want := max(size/(dim+2*quietZone), 1); scale != want {
		t.Errorf("scale %d px/module, want %d", scale, want)
	}
	if want := max(size, (dim+2*quietZone)*scale); w != want {
		t.Errorf("side %d px, want %d", w, want)
	}
	q := 4 * scale
	if box.Min.X < q || box.Min.Y < q || w-box.Max.X < q || w-box.Max.Y < q {
		t.Errorf("quiet zone under 4 modules: symbol %v in %dx%d", box, w, w)
	}
	// Whole pixels: every pixel matches its module's top-left pixel.
	for y := box.Min.Y; y < box.Max.Y; y++ {
		for x := box.Min.X; x < box.Max.X; x++ {
			mx := box.Min.X + (x-box.Min.X)/scale*scale
			my := box.Min.Y + (y-box.Min.Y)/scale*scale
			if dark(x, y) != dark(mx, my) {
				t.Fatalf("pixel (%d,%d) differs from its module at (%d,%d)", x, y, mx, my)
			}
		}
	}
	return scale, dim
}

func zbarDecode(t *testing.T, b []byte) string {
	t.Helper()
	if _, err := exec.LookPath("zbarimg"); err != nil {
		msg := "zbarimg not found; install Debian's zbar-tools for the second decoder"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg) // CI must never skip a decoder silently
		}
		t.Skip(msg)
	}
	path := filepath.Join(t.TempDir(), "qr.png")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// -Sbinary returns the symbol's bytes as is: without it zbar guesses a
	// charset for byte mode and tries Shift JIS first, which turns some UTF-8
	// (the EMVCo fixture's merchant name) into mojibake.
	out, err := exec.Command("zbarimg", "--raw", "-q", "--nodbus", "-Sbinary", path).Output()
	if err != nil {
		t.Errorf("zbarimg: %v", err)
		return ""
	}
	return string(out)
}

func FuzzRenderQR(f *testing.F) {
	for _, p := range qrPayloads {
		f.Add(p, byte('M'), int16(0))
	}
	f.Add("", byte(0), int16(-1))
	f.Add("0123456789", byte('h'), int16(21))
	f.Add("ABC $%*+-./:", byte('q'), int16(1000))
	f.Fuzz(func(t *testing.T, payload string, level byte, size int16) {
		b, err := Render(payload, Options{Level: level, Size: int(size)})
		if err != nil {
			for _, e := range []error{errEmpty, errTooLong, errLevel, errSize} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("unexpected error: %v", err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if r := img.Bounds(); r.Dx() != r.Dy() || r.Dx() < max(int(size), 29) {
			t.Fatalf("image %v for size %d", r, size)
		}
	})
}

func BenchmarkRenderQRWeChat256(b *testing.B) {
	b.ReportAllocs()
	var out []byte
	for b.Loop() {
		var err error
		if out, err = Render(qrWeChat, Options{Size: 256}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(out)), "png-bytes")
}
