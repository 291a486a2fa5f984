package signature_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

// Sign a Gate request, check a callback, and sign a Payment Page query.
func Example() {
	const secret = "secret"

	// A Gate request: general.signature is added, numbers kept as sent.
	gate, err := signature.SignGate([]byte(`{"general":{"project_id":238,"payment_id":"ORDER-1"},"payment":{"amount":1000,"currency":"EUR","rate":1.50}}`), secret)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(gate))

	// A callback: verified as the handler verifies it.
	callback := []byte(`{"project_id":238,"payment":{"id":"ORDER-1","status":"success"},"signature":"` +
		signature.Sign("payment:id:ORDER-1;payment:status:success;project_id:238", secret) + `"}`)
	fmt.Println(signature.VerifyCallback(callback, secret))
	forged := []byte(strings.Replace(string(callback), "success", "decline", 1))
	fmt.Println(errors.Is(signature.VerifyCallback(forged, secret), signature.ErrMismatch))

	// A Payment Page query: frame_mode is sent but not signed.
	q := url.Values{"project_id": {"238"}, "payment_id": {"ORDER-1"}, "payment_amount": {"1000"},
		"payment_currency": {"EUR"}, "frame_mode": {"popup"}}
	sig, err := signature.SignPaymentPage(q, secret)
	if err != nil {
		panic(err)
	}
	q.Set("signature", sig)
	fmt.Println(q.Encode())
	// Output:
	// {"general":{"project_id":238,"payment_id":"ORDER-1","signature":"xtSLBQ219iVkU/NwHMyRZ64IxoGSYQkW6brWrnviZAaL9WkYl+U5qVgh/nyOkIm2BZ3bherfU0RUAz75kdfw/g=="},"payment":{"amount":1000,"currency":"EUR","rate":1.50}}
	// <nil>
	// true
	// frame_mode=popup&payment_amount=1000&payment_currency=EUR&payment_id=ORDER-1&project_id=238&signature=sPaffaUhQNKZZW3bfIoJ%2FOCOE7FiN5Ak2c%2BUWubnKLrOfuSt97NCfuKLYOJU3ABnyI2A2FgBms%2BzRi1tiHESqw%3D%3D
}
