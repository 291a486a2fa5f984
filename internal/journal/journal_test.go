package journal

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The hook hears of every pruned entry at once; the log line comes at most
// once a minute, at Warn when a bound forced it.
func TestPruneLogReportsToHookAndRateLimitsTheLog(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	counted := map[string]int{}
	p := NewPruneLog(zap.New(core), func(reason string, n int) { counted[reason] += n })
	now := time.Unix(1_700_000_000, 0)
	p.Add(PruneAge, 2, now)
	p.Add(PruneSize, 3, now.Add(time.Second))
	p.Add(PruneUnverified, 0, now.Add(2*time.Second)) // nothing to report
	if counted[PruneAge] != 2 || counted[PruneSize] != 3 || len(counted) != 2 {
		t.Fatalf("hook counted %v", counted)
	}
	if logs.Len() != 1 || logs.All()[0].Level != zapcore.InfoLevel {
		t.Fatalf("after the first prune: %d lines", logs.Len())
	}
	p.Add(PruneSize, 1, now.Add(time.Minute))
	if logs.Len() != 2 {
		t.Fatalf("a minute later: %d lines, want 2", logs.Len())
	}
	if l := logs.All()[1]; l.Level != zapcore.WarnLevel || l.ContextMap()[PruneSize] != int64(4) {
		t.Fatalf("second line %v %v, want Warn with size 4", l.Level, l.ContextMap())
	}
	nothing := NewPruneLog(nil, nil)
	nothing.Add(PruneAge, 1, now) // neither hook nor logger: no panic
	nothing.Flush(now)
}

// Unverified entries lose their body and are cut to a bound without
// splitting a UTF-8 sequence; genuine ones keep everything.
func TestPrepareTruncatesOnlyUnverifiedCallbacks(t *testing.T) {
	long := strings.Repeat("ж", UnverifiedFieldMax)
	e := Event{Kind: KindCallback, PaymentID: long, Body: []byte("forged")}
	e.Prepare(time.Now())
	if e.Body != nil || !utf8.ValidString(e.PaymentID) || len(e.PaymentID) > UnverifiedFieldMax+len("…") ||
		!strings.HasSuffix(e.PaymentID, "…") {
		t.Fatalf("unverified entry kept %q and a body of %d bytes", e.PaymentID, len(e.Body))
	}
	if e.ID == "" || e.Time.IsZero() || e.Time.Location() != time.UTC {
		t.Fatalf("Prepare left ID %q, time %v", e.ID, e.Time)
	}
	g := Event{Kind: KindCallback, Verified: true, PaymentID: long, Body: []byte("genuine")}
	g.Prepare(time.Now())
	if g.PaymentID != long || string(g.Body) != "genuine" {
		t.Fatal("a verified entry was cut")
	}
}

// Truncate keeps at most n bytes and never splits a UTF-8 sequence.
func TestTruncate(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	got := Truncate(long, 200)
	if !strings.HasSuffix(got, "…") || len(got) > 200+len("…") || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Errorf("Truncate: %q", got)
	}
	if got := Truncate("é", 1); got != "…" {
		t.Errorf("Truncate of a split sequence: %q", got)
	}
	if Truncate("short", 200) != "short" {
		t.Error("a short string changed")
	}
}

// A full journal prunes in batches, a tenth of a small bound but at most a
// sixty-fourth of a large one, so no batch holds the writer for long.
func TestSizePruneFloor(t *testing.T) {
	for _, c := range []struct{ max, floor int64 }{
		{256 << 20, 252 << 20}, // the default: 4 MiB at a time
		{32 << 20, 31 << 20},   // 1 MiB
		{4 << 20, 4<<20 - (4<<20)/10},
		{1000, 900},
	} {
		if got := SizePruneFloor(c.max); got != c.floor {
			t.Errorf("SizePruneFloor(%d) = %d, want %d", c.max, got, c.floor)
		}
	}
}
