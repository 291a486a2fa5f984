package ecommpay

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/localstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
)

// TestJournalBenchFill is run by bench/journal.sh: it fills the local
// store at $ECOMMPAY_BENCH_FILL with $ECOMMPAY_BENCH_CALLBACKS callbacks
// through the store's own Claim, Commit and Record, as a default-configured
// Caddy would have written them over the last 20 days: per payment a signed
// Payment Page request and two callbacks, the last one leaving a third of
// the payments awaiting the customer (open). It prints a payment and an
// event key from the middle of the journal for the script to ask for.
func TestJournalBenchFill(t *testing.T) {
	path := os.Getenv("ECOMMPAY_BENCH_FILL")
	if path == "" {
		t.Skip("run by bench/journal.sh")
	}
	n, err := strconv.Atoi(os.Getenv("ECOMMPAY_BENCH_CALLBACKS"))
	if err != nil || n < 2 {
		t.Fatalf("ECOMMPAY_BENCH_CALLBACKS=%q", os.Getenv("ECOMMPAY_BENCH_CALLBACKS"))
	}
	b, err := localstore.Open(path, 0, journal.Options{}, store.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	payments := n / 2
	span := 20 * 24 * time.Hour
	start := time.Now().Add(-span)
	step := span / time.Duration(payments)
	methods := []string{"card", "wechat", "alipay", "mbway"}
	for i := range payments {
		at := start.Add(time.Duration(i) * step)
		pid := fmt.Sprintf("order-%07d", i)
		method := methods[i%len(methods)]
		storetest.Record(t, b, journal.Event{Kind: journal.KindPaymentPage, Time: at, ProjectID: "238", PaymentID: pid, Verified: true,
			Path: "/payment-page", Amount: strconv.Itoa(1000 + i%9000), Currency: "CNY", Method: method, Result: "signed", Status: 200})
		for c, status := range []string{"processing", "success"} {
			if c == 1 && i%3 == 0 {
				status = "awaiting customer"
			}
			result, app := "forwarded", 200
			if i%100 == 7 && c == 1 {
				result, app = "app_error", 500
			}
			key := fmt.Sprintf("238:%s:%d:sale:%s", pid, 1000+c, status)
			body := fmt.Sprintf(`{"project_id":238,"payment":{"id":%q,"type":"purchase","status":%q,"date":%q,`+
				`"method":%q,"sum":{"amount":%d,"currency":"CNY"},"description":"bench order"},"customer":{"id":"c-%d"},`+
				`"operation":{"id":%d,"type":"sale","status":%q,"date":%q,"created_date":%q,"request_id":"req-%d-%d",`+
				`"sum_initial":{"amount":%d,"currency":"CNY"},"sum_converted":{"amount":%d,"currency":"CNY"},`+
				`"provider":{"id":1234,"payment_id":"prov-%d","date":%q,"auth_code":""},"code":"0","message":"Success"},`+
				`"signature":"bench0000000000000000000000000000000000000000000000000000000000000000000000000000000000"}`,
				pid, status, at.Format(time.RFC3339), method, 1000+i%9000, i, 1000+c, status, at.Format(time.RFC3339),
				at.Format(time.RFC3339), i, c, 1000+i%9000, 1000+i%9000, i, at.Format(time.RFC3339))
			cbAt := at.Add(time.Duration(c+1) * time.Second)
			if _, tok, err := b.Claim(ctx, key, time.Minute); err == nil && tok != "" {
				if result == "forwarded" {
					_ = b.Commit(ctx, key, tok, 14*24*time.Hour)
				} else {
					_ = b.Release(ctx, key, tok)
				}
			}
			storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Time: cbAt, ProjectID: "238", PaymentID: pid,
				OperationID: strconv.Itoa(1000 + c), OperationType: "sale", OperationStatus: status, PaymentStatus: status,
				EventKey: key, Result: result, Status: 200, AppStatus: app, AppLatencyMS: 3, Verified: true,
				Method: method, Body: []byte(body)})
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// A payment among the newest fifth, which the size bound leaves.
	mid := payments - payments/5
	if mid%3 == 0 {
		mid++ // a final one, with both callbacks
	}
	fmt.Printf("SAMPLE order-%07d 238:order-%07d:1001:sale:success\n", mid, mid)
}
