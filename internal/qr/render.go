package qr

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"

	qrcode "github.com/yeqown/go-qrcode/v2"
)

// Rendering errors, wrapped with the offending value; the package tests
// tell them apart with errors.Is. Callers only log them.
var (
	// errEmpty reports an empty payload.
	errEmpty = errors.New("ecommpay: empty QR payload")
	// errTooLong reports a payload that does not fit a version-40 symbol at the chosen level.
	errTooLong = errors.New("ecommpay: QR payload too long for the error-correction level")
	// errLevel reports an error-correction level other than L, M, Q or H.
	errLevel = errors.New("ecommpay: QR level must be L, M, Q or H")
	// errSize reports a negative target size or one above maxSize.
	errSize = errors.New("ecommpay: QR size out of range")
)

const (
	// defaultSize is the target image side in pixels when Options.Size is 0.
	defaultSize = 256
	// maxSize bounds Options.Size so a config typo cannot allocate gigabytes.
	maxSize = 4096
	// quietZone is the quiet zone in modules required by ISO/IEC 18004.
	quietZone = 4
)

// Options selects the error-correction level and target size of a QR image.
type Options struct {
	Level byte // 'L', 'M', 'Q' or 'H'; 0 means 'M'
	Size  int  // target image side in px; 0 means defaultSize
}

// Normalize applies defaults and validates, so equal renders share one cache key.
func (o Options) Normalize() (Options, error) {
	if o.Level == 0 {
		o.Level = 'M'
	}
	if o.Level >= 'a' && o.Level <= 'z' {
		o.Level -= 'a' - 'A'
	}
	if _, ok := levels[o.Level]; !ok {
		return o, fmt.Errorf("%w: %q", errLevel, o.Level)
	}
	if o.Size == 0 {
		o.Size = defaultSize
	}
	if o.Size < 0 || o.Size > maxSize {
		return o, fmt.Errorf("%w: %d (max %d)", errSize, o.Size, maxSize)
	}
	return o, nil
}

var levels = map[byte]qrcode.EncodeOption{
	'L': qrcode.WithErrorCorrectionLevel(qrcode.ErrorCorrectionLow),
	'M': qrcode.WithErrorCorrectionLevel(qrcode.ErrorCorrectionMedium),
	'Q': qrcode.WithErrorCorrectionLevel(qrcode.ErrorCorrectionQuart),
	'H': qrcode.WithErrorCorrectionLevel(qrcode.ErrorCorrectionHighest),
}

// ParseLevel parses a config value "L", "M", "Q" or "H" (any case) into a Options.Level.
func ParseLevel(s string) (byte, error) {
	if len(s) == 1 {
		if o, err := (Options{Level: s[0]}).Normalize(); err == nil {
			return o.Level, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", errLevel, s)
}

// Render encodes payload (UTF-8 text goes in byte mode) as a 1-bit greyscale PNG
// with whole pixels per module and at least 4 modules of quiet zone. The image
// side is exactly opt.Size unless the symbol needs more than that at 1 px per module.
// The encoder breaks mask-score ties in goroutine order, so a few percent of
// payloads can come out as different (equally valid) bytes between calls.
func Render(payload string, opt Options) ([]byte, error) {
	opt, err := opt.Normalize()
	if err != nil {
		return nil, err
	}
	if payload == "" {
		return nil, errEmpty
	}
	code, err := qrcode.NewWith(payload, levels[opt.Level])
	if err != nil {
		// With a non-empty payload the only failure is version selection.
		return nil, fmt.Errorf("%w: %d bytes at level %c", errTooLong, len(payload), opt.Level)
	}
	var m matrixGrab
	if err := code.Save(&m); err != nil {
		return nil, err
	}
	return writeQRPNG(&m.mat, opt.Size), nil
}

// matrixGrab is a qrcode.Writer that keeps the finished matrix.
type matrixGrab struct{ mat qrcode.Matrix }

func (g *matrixGrab) Write(m qrcode.Matrix) error { g.mat = m; return nil }
func (g *matrixGrab) Close() error                { return nil }

type pngScratch struct {
	z    *zlib.Writer
	idat bytes.Buffer
	line []byte
}

var pngPool = sync.Pool{New: func() any {
	s := &pngScratch{}
	// Reusing the ~1 MB compressor is what keeps a render under a millisecond.
	s.z, _ = zlib.NewWriterLevel(&s.idat, zlib.DefaultCompression)
	return s
}}

// writeQRPNG writes the PNG chunks directly: stdlib image/png packs 1-bit
// pixels one at a time and costs several times more.
func writeQRPNG(m *qrcode.Matrix, size int) []byte {
	dim := m.Width()
	scale := max(size/(dim+2*quietZone), 1)
	side := (dim + 2*quietZone) * scale
	if side < size {
		side = size // extra border; the quiet zone only grows
	}
	left := (side - dim*scale) / 2
	stride := (side + 7) / 8

	s := pngPool.Get().(*pngScratch)
	defer pngPool.Put(s)
	s.idat.Reset()
	s.z.Reset(&s.idat)
	if cap(s.line) < 1+stride {
		s.line = make([]byte, 1+stride)
	}
	line := s.line[:1+stride]
	line[0] = 0 // filter type None

	white := func() {
		for i := 1; i < len(line); i++ {
			line[i] = 0xff // gray 1 = white
		}
	}
	white()
	for range left {
		s.z.Write(line)
	}
	for y := range dim {
		white()
		for x := range dim {
			if !m.Col(x)[y].IsSet() {
				continue
			}
			for p := left + x*scale; p < left+(x+1)*scale; p++ {
				line[1+p/8] &^= 0x80 >> (p % 8)
			}
		}
		for range scale {
			s.z.Write(line)
		}
	}
	white()
	for range side - left - dim*scale {
		s.z.Write(line)
	}
	s.z.Close() // writes to a bytes.Buffer cannot fail

	out := make([]byte, 0, 8+25+12+s.idat.Len()+12)
	out = append(out, "\x89PNG\r\n\x1a\n"...)
	var ihdr [13]byte
	binary.BigEndian.PutUint32(ihdr[0:], uint32(side))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(side))
	ihdr[8] = 1 // bit depth; colour type, compression, filter, interlace stay 0
	out = pngChunk(out, "IHDR", ihdr[:])
	out = pngChunk(out, "IDAT", s.idat.Bytes())
	return pngChunk(out, "IEND", nil)
}

func pngChunk(out []byte, typ string, data []byte) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(len(data)))
	start := len(out)
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[start:]))
}
