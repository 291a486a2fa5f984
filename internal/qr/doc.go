// Package qr owns the QR images of ecommpay's qr_data: rendering a payload
// as a PNG (Render, with the error-correction level and size in Options), a
// memory-bounded cache of rendered images (Cache), the signed links under
// which a handler serves an image without shared state (MakeLink, ParseLink,
// Link.Valid), and the one walk over a callback body's display_data, where
// the qr_data entries are (DisplayEntries). It knows nothing of Caddy or
// HTTP handlers: the module's qr settings, its display_data rewrite and its
// image route stay in the root package, and the console renders qr_data
// through this one.
package qr
