package ecommpay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
)

// A replay (from the console) and a status answer (from reconciliation)
// reach the app the way a callback does: through the callback route's own
// handlers, so there is no second address to configure. They are dispatched
// in process through the Caddy server that serves the callback route,
// marked by a context value that no client can set.

// dispatchKey is the context key of a dispatched request.
type dispatchKey struct{}

// dispatched is one in-process delivery and, once served, its outcome.
type dispatched struct {
	target *Handler // the callback handler meant to serve it
	kind   string   // journal.KindReplay or journal.KindStatus; "" for a probe
	body   []byte
	// eventKey is the replayed event's key.
	eventKey string

	reached bool // the target handler saw it
	ev      journal.Event
}

// callbackHandlers are the provisioned callback handlers of this process
// and their routes, for the console and reconciliation to dispatch into.
var callbackHandlers sync.Map // *Handler -> *callbackRoute

// callbackRoute is where a callback handler is served: its server, and a
// host and path that reach it, found on first use.
type callbackRoute struct {
	server     *caddyhttp.Server
	once       sync.Once
	host, path string
	err        error
}

// callbackHandlerFor returns a callback handler that knows the project.
func callbackHandlerFor(projectID string) *Handler {
	var found *Handler
	callbackHandlers.Range(func(k, _ any) bool {
		if h := k.(*Handler); h.lookupProject(projectID) != nil {
			found = h
			return false
		}
		return true
	})
	return found
}

// dispatch serves a request carrying d through the server of h's route,
// so that it passes the same handlers a callback passes. It reports an
// error when the request does not reach h.
func (h *Handler) dispatch(ctx context.Context, d *dispatched) error {
	rt := h.route
	if rt == nil {
		return errors.New("the callback handler is not served by an HTTP server")
	}
	rt.once.Do(func() { rt.host, rt.path, rt.err = routeTo(rt.server.Routes, h) })
	if rt.err != nil {
		return rt.err
	}
	d.target = h
	req, err := http.NewRequestWithContext(context.WithValue(ctx, dispatchKey{}, d), http.MethodPost,
		"http://"+rt.host+rt.path, bytes.NewReader(d.body))
	if err != nil {
		return err
	}
	req.RequestURI = rt.path
	req.RemoteAddr = "127.0.0.1:0"
	req.Header.Set("Content-Type", "application/json")
	rt.server.ServeHTTP(&discardWriter{header: http.Header{}}, req)
	if !d.reached {
		return fmt.Errorf("an in-process request to %s%s did not reach the callback handler; "+
			"give its route a plain host and path matcher", rt.host, rt.path)
	}
	return nil
}

// routeTo finds the route to h among routes and returns a host and path
// that its matchers accept: the first host and path they name, with the
// prefixes that handle_path strips put back.
func routeTo(routes caddyhttp.RouteList, h *Handler) (host, path string, err error) {
	if !walkRoutes(routes, h, "", &host, &path) {
		return "", "", errors.New("the callback handler is not among its server's routes")
	}
	if host == "" {
		host = "localhost"
	}
	if path == "" {
		path = "/"
	}
	return host, path, nil
}

func walkRoutes(routes caddyhttp.RouteList, h *Handler, prefix string, host, path *string) bool {
	for _, rt := range routes {
		var rtHost, rtPath string
		for _, set := range rt.MatcherSets {
			for _, m := range set {
				switch m := m.(type) {
				case *caddyhttp.MatchHost:
					if len(*m) > 0 && !strings.Contains((*m)[0], "*") {
						rtHost = (*m)[0]
					}
				case *caddyhttp.MatchPath:
					if len(*m) > 0 {
						rtPath = prefix + strings.TrimSuffix((*m)[0], "*")
					}
				}
			}
		}
		inner := prefix
		for _, mh := range rt.Handlers {
			switch mh := mh.(type) {
			case *Handler:
				if mh == h {
					setIf(host, rtHost)
					setIf(path, rtPath)
					return true
				}
			case *rewrite.Rewrite:
				inner += mh.StripPathPrefix
			case *caddyhttp.Subroute:
				if walkRoutes(mh.Routes, h, inner, host, path) {
					setIf(host, rtHost)
					setIf(path, rtPath)
					return true
				}
			}
		}
	}
	return false
}

// setIf sets *dst to v unless an inner route set it already.
func setIf(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// discardWriter is the response writer of a dispatched request: the
// outcome travels in the dispatched value, not in the response.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }
func (w *discardWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(b), nil
}
func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
