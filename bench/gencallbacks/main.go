// Command gencallbacks writes distinct, signed ecommpay callbacks for the
// load test, one JSON body per line. Each body has the shape and size of a
// typical 1.5 KB payment callback; the payment id, the operation ids and
// the request id differ per line, so every line is a new event to the
// de-duplication store.
//
//	go run ./bench/gencallbacks -secret S -project 238 -n 100000 -from 0 -out FILE
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

// template is the typical callback of internal/canon's tests
// (typicalCallback) with its varying fields replaced by verbs: [1] the
// project id (top level and in general), [2] the callback's number (in
// payment.id, general.payment_id and operation.request_id), [3] the id of
// the first operation and [4] the id of the final one (operation.id and the
// last of operations).
const template = `{"project_id":%[1]s,"payment":{"id":"BENCH_%012[2]d","type":"purchase","status":"success","date":"2019-01-28T08:07:22+0000","method":"wechat","sum":{"amount":100,"currency":"EUR"},"description":"TEST_1548660618473453"},"account":{"number":"wechat-user-8842"},"customer":{"id":"customer123","ip_address":"192.0.2.10","email":"customer@example.com","phone":"19121234567"},"operation":{"id":%[4]d,"type":"sale","status":"success","date":"2019-01-28T08:07:22+0000","created_date":"2019-01-28T08:06:40+0000","request_id":"67af98801524dfa9c5cddb1a09129-%012[2]d","sum_initial":{"amount":100,"currency":"EUR"},"sum_converted":{"amount":100,"currency":"EUR"},"provider":{"id":1173,"payment_id":"423163569","date":"2019-01-28T08:07:22+0000","auth_code":"","endpoint_id":1173},"code":"0","message":"Success","eci":"7"},"recurring":{"id":null,"currency":null},"operations":[{"id":%[3]d,"type":"sale","status":"awaiting customer","date":"2019-01-28T08:06:41+0000","code":"0","message":"Awaiting customer action","sum":{"amount":100,"currency":"EUR"}},{"id":%[4]d,"type":"sale","status":"success","date":"2019-01-28T08:07:22+0000","code":"0","message":"Success","sum":{"amount":100,"currency":"EUR"}}],"general":{"project_id":%[1]s,"payment_id":"BENCH_%012[2]d"}}`

func main() {
	secret := flag.String("secret", "", "the project's secret key (required)")
	project := flag.String("project", "238", "project_id")
	n := flag.Int("n", 10000, "how many callbacks to write")
	from := flag.Int("from", 0, "number of the first callback; runs that must not repeat events use disjoint ranges")
	out := flag.String("out", "", "output file (default: standard output)")
	flag.Parse()
	if *secret == "" || *n < 0 || *from < 0 || strings.ContainsAny(*project, "\"\\ ") {
		flag.Usage()
		os.Exit(2)
	}
	f := os.Stdout
	if *out != "" {
		var err error
		if f, err = os.Create(*out); err != nil {
			log.Fatal(err)
		}
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := *from; i < *from+*n; i++ {
		op := int64(9227000000000) + 2*int64(i)
		body := fmt.Sprintf(template, *project, i, op, op+1)
		canonical, sig, err := signature.CallbackCanonical([]byte(body))
		if err != nil {
			log.Fatalf("callback %d: %v", i, err)
		}
		if sig != "" {
			log.Fatalf("callback %d already carries a signature", i)
		}
		// Sign the way ecommpay does: general.signature, last member.
		signed := body[:len(body)-2] + `,"signature":"` + signature.Sign(canonical, *secret) + `"}}`
		w.WriteString(signed)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}
