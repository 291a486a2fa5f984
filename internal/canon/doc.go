// Package canon owns ecommpay's signature core: a strict JSON parser
// (Doc: member order and number literals kept, bounded against hostile
// input), the canonical string of a document or of flat parameters, in
// the order and renderings of ecommpay's PHP SDK, and the keyed
// HMAC-SHA512 that signs and verifies it. It also knows what a signature
// covers and where it goes (sign.go). It knows nothing of HTTP, Caddy or
// the Payment Page's fields: the handlers and the public signature
// package build on it. Standard library only.
package canon
