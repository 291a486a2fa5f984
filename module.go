// Package ecommpay is a Caddy HTTP handler that signs ecommpay Payment Page
// URLs and Gate API requests, and verifies, de-duplicates and forwards
// ecommpay callbacks, so that the merchant's app never holds the secret.
package ecommpay
