package ecommpay

import (
	"context"
	"net/http"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
)

// routeTo finds a host and path that reach the handler, putting back what
// handle_path strips.
func TestRouteToFindsTheCallbackRoute(t *testing.T) {
	h, other := &Handler{}, &Handler{}
	host := caddyhttp.MatchHost{"shop.example"}
	prefix := caddyhttp.MatchPath{"/ecommpay/*"}
	path := caddyhttp.MatchPath{"/callback"}
	elsewhere := caddyhttp.MatchPath{"/other"}
	routes := caddyhttp.RouteList{
		{MatcherSets: caddyhttp.MatcherSets{{&elsewhere}}, Handlers: []caddyhttp.MiddlewareHandler{other}},
		{MatcherSets: caddyhttp.MatcherSets{{&host}}, Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
			{MatcherSets: caddyhttp.MatcherSets{{&prefix}}, Handlers: []caddyhttp.MiddlewareHandler{
				&rewrite.Rewrite{StripPathPrefix: "/ecommpay"},
				&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
					{MatcherSets: caddyhttp.MatcherSets{{&path}}, Handlers: []caddyhttp.MiddlewareHandler{h}},
				}},
			}},
		}}}},
	}
	gotHost, gotPath, err := routeTo(routes, h)
	if err != nil || gotHost != "shop.example" || gotPath != "/ecommpay/callback" {
		t.Fatalf("routeTo = %q %q %v, want shop.example /ecommpay/callback", gotHost, gotPath, err)
	}
	if _, _, err := routeTo(routes, &Handler{}); err == nil {
		t.Fatal("found a handler that is not in the routes")
	}
}

// A replay reaches the app marked as one, and is not blocked by de-dup;
// the journal outcome travels back in the dispatched value.
func TestDispatchedReplayIsMarkedAndNotDeduplicated(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK {
		t.Fatalf("first delivery: %d", w.Code)
	}
	for i := 0; i < 2; i++ {
		d := &dispatched{target: h, kind: journal.KindReplay, body: body}
		r := post("/cb", nil).WithContext(context.WithValue(context.Background(), dispatchKey{}, d))
		serve(h, r, next)
		if !d.reached || d.ev.Result != "forwarded" || d.ev.AppStatus != http.StatusOK || d.ev.Kind != journal.KindReplay {
			t.Fatalf("replay %d: reached %v, outcome %+v", i, d.reached, d.ev)
		}
	}
	got := app.received()
	if len(got) != 3 {
		t.Fatalf("the app got %d deliveries, want the callback and two replays", len(got))
	}
	if got[0].header.Get(headerReplay) != "" || got[1].header.Get(headerReplay) != "1" || got[2].header.Get(headerReplay) != "1" {
		t.Fatalf("replay marks: %q %q %q", got[0].header.Get(headerReplay), got[1].header.Get(headerReplay), got[2].header.Get(headerReplay))
	}
	// A client cannot pass for a replay.
	r := post("/cb", body)
	r.Header.Set(headerReplay, "1")
	if w := serve(h, r, next); w.Header().Get(headerDuplicate) != "1" || len(app.received()) != 3 {
		t.Fatalf("a client's replay header got through: %d dup=%q", w.Code, w.Header().Get(headerDuplicate))
	}
}
