package sqlitestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

// BenchmarkWrite is the writer's cost per callback as the default
// configuration has it: an entry of a new payment with a 1.5 KB body under
// a random event key, and its delivered mark, written 256 to a
// transaction. cpu-ns/op is the process's CPU time (user + system) per
// callback, which is what the writer takes from the callbacks; ns/op adds
// the wait for each transaction's fsync.
func BenchmarkWrite(b *testing.B) { benchWrite(b, 1<<40) }

// BenchmarkWriteFull is BenchmarkWrite at a full journal, the steady state
// of a shop after some weeks: the store's MaxSize is 8 MiB and it is filled
// past it first, so each callback written is matched by an old one pruned.
// Each payment takes two callbacks, so pruning one entry of a payment
// keeps its row and pruning the other deletes it.
func BenchmarkWriteFull(b *testing.B) { benchWrite(b, 8<<20) }

func benchWrite(b *testing.B, maxSize int64) {
	data := bytes.Repeat([]byte("x"), 700)
	view := bytes.Repeat([]byte("y"), 500)
	var pruned atomic.Bool
	s, _, _, err := Open(filepath.Join(b.TempDir(), "ecommpay.db"), Config{
		Options: journal.Options{MaxAge: time.Hour, MaxSize: maxSize, MaxUnverified: 1000},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Status: "success", Method: "card", Final: true, Data: view}, nil
		},
		Count:   func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
		OnPrune: func(Pruned) { pruned.Store(true) },
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
	i := 0
	payment := ""
	write := func() {
		now := time.Now()
		if maxSize == 1<<40 || i%2 == 0 {
			payment = "ORDER-" + random(8)
		}
		if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%s", now.UnixNano(), random(4)), Time: now,
			Kind: "callback", ProjectID: "42", PaymentID: payment, EventKey: random(20),
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
	if maxSize < 1<<40 {
		for !pruned.Load() {
			write()
		}
		if err := s.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		i = 0
	}
	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for b.Loop() {
		write()
	}
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() - before.Utime.Nano() + after.Stime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(i), "cpu-ns/op")
}

// BenchmarkTimeline reads a payment's row and entries, as the console's
// payment page and its Attention page (once per refused callback) do, in
// a journal of 20,000 payments of three entries each.
func BenchmarkTimeline(b *testing.B) {
	s, _, _, err := Open(filepath.Join(b.TempDir(), "ecommpay.db"), Config{
		Options: journal.Options{MaxAge: time.Hour, MaxSize: 1 << 40, MaxUnverified: 1000},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Status: "success", Method: "card", Data: bytes.Repeat([]byte("y"), 300)}, nil
		},
		Count: func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	data := bytes.Repeat([]byte("x"), 400)
	const payments = 20_000
	start := time.Now().Add(-time.Minute)
	for i := range 3 * payments {
		t := start.Add(time.Duration(i) * time.Microsecond)
		p := fmt.Sprintf("order-%07d", i%payments)
		if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%08x", t.UnixNano(), i), Time: t, Kind: "callback",
			ProjectID: "238", PaymentID: p, EventKey: fmt.Sprintf("238:%s:%d", p, i), Result: "forwarded",
			Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		view, evs, err := s.Timeline(ctx, "238", fmt.Sprintf("order-%07d", (i*7919)%payments), start.Add(-time.Hour))
		if err != nil || view == nil || len(evs) != 3 {
			b.Fatalf("Timeline: %d entries, %v", len(evs), err)
		}
		i++
	}
}
