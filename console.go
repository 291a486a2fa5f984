package ecommpay

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/console"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The console mode: internal/console's handler, behind the checks the
// signing modes make (who may ask, which Host), mounted wherever the
// operator likes (for example handle_path /ecommpay/* on the internal
// listener). A replay reaches the app through the callback route's own
// handlers (dispatch.go).

// provisionConsole builds the console over the handler's journal; it runs
// again whenever tests swap the journal.
func (h *Handler) provisionConsole() {
	if h.journal == nil {
		h.console = nil
		return
	}
	cfg := console.Config{
		Journal:        h.journal,
		Replay:         replayToApp,
		AttentionAfter: time.Duration(h.AttentionAfter),
		AllowProxied:   h.AllowProxied,
		Prefix:         consolePrefix,
		Logger:         h.logger,
	}
	// Every store.Backend tells when it is losing what it is given (the banner).
	if hs, ok := h.journal.(interface{ Health() (bool, string) }); ok {
		cfg.Health = hs.Health
	}
	h.console = console.New(cfg)
}

// serveConsole answers console pages and API calls.
func (h *Handler) serveConsole(w http.ResponseWriter, r *http.Request) error {
	if rf := h.signingRefusal(r); rf != nil {
		respond.Error(w, rf.status, "", "%s", rf.msg)
		return nil
	}
	if h.journal == nil || h.console == nil {
		respond.Error(w, http.StatusServiceUnavailable, "", "the journal is off")
		return nil
	}
	h.console.ServeHTTP(w, r)
	return nil
}

// consolePrefix is where the console is mounted: the part of the original
// path that handle_path stripped.
func consolePrefix(r *http.Request) string {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok || orig.URL == nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSuffix(orig.URL.Path, r.URL.Path), "/")
}

// replayToApp sends a stored body to the app again through the callback
// handler of this process that knows its project.
func replayToApp(ctx context.Context, projectID string, body []byte) (journal.Event, error) {
	target := callbackHandlerFor(projectID)
	if target == nil {
		return journal.Event{}, console.ErrNoCallbackHandler
	}
	d := &dispatched{kind: journal.KindReplay, body: body}
	if err := target.dispatch(ctx, d); err != nil {
		return journal.Event{}, err
	}
	return d.ev, nil
}
