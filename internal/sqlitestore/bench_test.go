package sqlitestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkWrite is the writer's cost per callback as the default
// configuration has it: an entry of a new payment with a 1.5 KB body under
// a random event key, and its delivered mark, written 256 to a
// transaction. cpu-ns/op is the process's CPU time (user + system) per
// callback, which is what the writer takes from the callbacks; ns/op adds
// the wait for each transaction's fsync.
func BenchmarkWrite(b *testing.B) {
	data := bytes.Repeat([]byte("x"), 700)
	view := bytes.Repeat([]byte("y"), 500)
	s, _, _, err := Open(filepath.Join(b.TempDir(), "ecommpay.db"), Config{
		Options: Options{MaxAge: time.Hour, MaxSize: 1 << 40, MaxUnverified: 1000},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Status: "success", Method: "card", Final: true, Data: view}, nil
		},
		Count: func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	body := bytes.Repeat([]byte("z"), 1500)
	random := func(n int) string {
		r := make([]byte, n)
		_, _ = rand.Read(r)
		return hex.EncodeToString(r)
	}
	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	i := 0
	for b.Loop() {
		now := time.Now()
		if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%s", now.UnixNano(), random(4)), Time: now,
			Kind: "callback", ProjectID: "42", PaymentID: "ORDER-" + random(8), EventKey: random(20),
			Result: "forwarded", Data: data, Body: body}); err != nil {
			b.Fatal(err)
		}
		var k Key
		_, _ = rand.Read(k[:])
		if err := s.Mark(ctx, k, now.Add(time.Hour).UnixNano()); err != nil {
			b.Fatal(err)
		}
		if i++; i%256 == 0 {
			if err := s.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() - before.Utime.Nano() + after.Stime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(i), "cpu-ns/op")
}
