package integration

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The default store survives what a restart does to a process: a callback
// delivered, then Caddy killed with SIGKILL a second later (or stopped
// gracefully, or reloaded), then started again on the same config and data
// directory: the same callback is a duplicate and does not reach the app
// again.
func TestDeliveredSurvivesRestart(t *testing.T) {
	for _, how := range []string{"SIGKILL", "SIGTERM", "reload"} {
		t.Run(how, func(t *testing.T) {
			s := newStack(t, nil)
			pid := newPaymentID("dur")
			body := plainCallback(s, pid)
			if code, hdr, _, err := s.fake.postRaw(s.caddy.callbackURL(), body, nil); err != nil || code != http.StatusOK || hdr.Get("X-Ecommpay-Duplicate") != "" {
				t.Fatalf("first delivery: %d %v dup=%q", code, err, hdr.Get("X-Ecommpay-Duplicate"))
			}
			time.Sleep(time.Second)
			switch how {
			case "SIGKILL":
				s.caddy = restartCaddy(t, s.caddy, syscall.SIGKILL)
			case "SIGTERM":
				s.caddy = restartCaddy(t, s.caddy, syscall.SIGTERM)
			default:
				reload(t, s.caddy)
			}
			code, hdr, _, err := s.fake.postRaw(s.caddy.callbackURL(), body, nil)
			if err != nil || code != http.StatusOK || hdr.Get("X-Ecommpay-Duplicate") != "1" {
				t.Fatalf("after %s: %d %v dup=%q, want a duplicate 200", how, code, err, hdr.Get("X-Ecommpay-Duplicate"))
			}
			st := s.shop.state(t)
			if n := len(st.eventsFor(pid)); n != 1 || st.eventsFor(pid)[0].Count != 1 {
				t.Fatalf("after %s the shop has %d events for the payment", how, n)
			}
		})
	}
}

// restartCaddy ends c with sig and starts the same binary again with the
// same Caddyfile, environment and data directory.
func restartCaddy(t *testing.T, c *caddyProc, sig syscall.Signal) *caddyProc {
	t.Helper()
	closeIdleConnections()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("caddy did not exit on %v", sig)
	}
	dir := c.cmd.Dir
	logPath := filepath.Join(dir, fmt.Sprintf("caddy-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.cmd.Path, c.cmd.Args[1:]...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, c.cmd.Env, logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	n := &caddyProc{name: c.name, cfg: c.cfg, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		n.waitErr = cmd.Wait()
		logf.Close()
		close(n.exited)
	}()
	t.Cleanup(func() { n.stop() })
	if err := n.waitReady(20 * time.Second); err != nil {
		t.Fatalf("%s did not come back: %v\n%s", c.name, err, tailFile(logPath, 60))
	}
	n.ready = true
	return n
}

// plainCallback is a signed final callback for a payment the fake need not
// know.
func plainCallback(s *stack, paymentID string) []byte {
	return signJSONWithSignatureAt(map[string]any{
		"project_id": projectID,
		"payment":    map[string]any{"id": paymentID, "type": "purchase", "status": "success", "method": "wechat"},
		"operation":  map[string]any{"id": 1, "type": "sale", "status": "success"},
	}, s.fake.callbackSecret(), false)
}
