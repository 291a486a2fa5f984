package storetest

import (
	"bytes"
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
)

// Bench measures a delivery (Claim then Commit of a new key) and a journal
// Record, in an empty journal and in a full one, on the backends open
// returns (closed by the benchmark).
func Bench(b *testing.B, open func(b *testing.B, o journal.Options) store.Backend) {
	b.Run("ClaimCommit", func(b *testing.B) {
		be := open(b, journal.Options{})
		defer be.Close()
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			k := Key(i)
			st, tok, err := be.Claim(ctx, k, time.Minute)
			if err != nil || st != store.Claimed {
				b.Fatal(st, err)
			}
			if err := be.Commit(ctx, k, tok, 14*24*time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		waitWritten(b, be)
	})
	b.Run("Record", func(b *testing.B) {
		be := open(b, journal.Options{})
		defer be.Close()
		ctx := context.Background()
		body := bytes.Repeat([]byte("x"), 1000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if err := be.Record(ctx, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1",
				PaymentID: strconv.Itoa(i % 1000), EventKey: "k" + strconv.Itoa(i), Body: body,
				PaymentStatus: "success", Result: "forwarded"}); err != nil {
				b.Fatal(err)
			}
		}
		waitWritten(b, be)
	})
	// A full journal prunes an entry for each one recorded.
	b.Run("RecordFull", func(b *testing.B) {
		be := open(b, journal.Options{MaxSize: 4 << 20})
		defer be.Close()
		ctx := context.Background()
		body := bytes.Repeat([]byte("x"), 1000)
		rec := func(i int) {
			if err := be.Record(ctx, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1",
				PaymentID: strconv.Itoa(i % 1000), EventKey: "k" + strconv.Itoa(i), Body: body,
				PaymentStatus: "success", Result: "forwarded"}); err != nil {
				b.Fatal(err)
			}
		}
		for i := range 5000 { // fill it
			rec(-i)
		}
		waitWritten(b, be)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			rec(i + 1)
		}
		waitWritten(b, be)
	})
}

// waitWritten counts the disk writes in a local benchmark's figure: Commit
// and Record only queue them.
func waitWritten(b *testing.B, be store.Backend) {
	if lb, ok := be.(interface{ Flush(context.Context) error }); ok {
		if err := lb.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
