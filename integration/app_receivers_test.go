package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The app guide's receivers (examples/app/receiver.php and receiver.py),
// run as printed behind a real Caddy: each event is stored once under its
// X-Ecommpay-Event-Key, a replay is answered 200 without a second row, and
// a status event from reconciliation is stored with its source.

type receiverRow struct {
	Key             string `json:"event_key"`
	PaymentID       string `json:"payment_id"`
	PaymentStatus   string `json:"payment_status"`
	OperationType   string `json:"operation_type"`
	OperationStatus string `json:"operation_status"`
	Source          string `json:"source"`
	Body            string `json:"body"`
}

// receiverRows reads the receiver's table with Python's sqlite3.
func receiverRows(t *testing.T, db string) []receiverRow {
	t.Helper()
	if _, err := os.Stat(db); err != nil {
		return nil
	}
	script := `import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in db.execute("SELECT * FROM ecommpay_events ORDER BY rowid")]))`
	out, err := exec.Command(pythonPath(t), "-c", script, db).Output()
	if err != nil {
		t.Fatalf("reading %s: %v", db, err)
	}
	var rows []receiverRow
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

// startReceiver runs one receiver as printed on a free port.
func startReceiver(t *testing.T, lang, db string) int {
	t.Helper()
	port := freePort(t)
	dir := filepath.Dir(db)
	app := filepath.Join(repoRoot, "examples", "app")
	var cmd *exec.Cmd
	switch lang {
	case "php":
		php := needPHP(t)
		cmd = exec.Command(php, "-S", fmt.Sprintf("127.0.0.1:%d", port), filepath.Join(app, "receiver.php"))
	case "python":
		cmd = exec.Command(pythonPath(t), filepath.Join(app, "receiver.py"))
	}
	cmd.Dir = dir
	cmd.Env = append(filterEnv(os.Environ(), "APP_DB", "APP_PORT"), "APP_DB="+db, fmt.Sprintf("APP_PORT=%d", port), "PYTHONDONTWRITEBYTECODE=1")
	logPath := filepath.Join(dir, "receiver.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("---- %s receiver log ----\n%s", lang, tailFile(logPath, 40))
		}
	})
	eventually(t, 10*time.Second, "the receiver to listen", func() (bool, string) { return dialOK(port), "" })
	return port
}

type receiverTimeline struct {
	Events []struct {
		Kind            string `json:"kind"`
		Result          string `json:"result"`
		EventKey        string `json:"event_key"`
		PaymentStatus   string `json:"payment_status"`
		OperationStatus string `json:"operation_status"`
		AppStatus       int    `json:"app_status"`
	} `json:"events"`
}

func TestAppGuideReceivers(t *testing.T) {
	for _, lang := range []string{"php", "python"} {
		t.Run(lang, func(t *testing.T) {
			if lang == "php" {
				needPHP(t)
			}
			requireCaddy(t)
			secret := newSecret()
			fake := startFake(t, secret)
			db := filepath.Join(t.TempDir(), "events.db")
			cfg := newCaddyConfig(t, fake.port(), startReceiver(t, lang, db))
			cfg.CallbackOptions = reconcileBlock(cfg.Fake, reconcileAfter, time.Second, time.Minute)
			caddy := startCaddy(t, "caddy", cfg, secret)
			fake.setCallbackURLs(caddy.callbackURL())
			t.Cleanup(fake.stopDeliveries)
			s := &stack{t: t, secret: secret, fake: fake, caddy: caddy}

			sale := func(pid string) {
				body := fmt.Sprintf(`{"general":{"payment_id":%q},"customer":{"id":"c1","ip_address":"192.0.2.10"},"payment":{"amount":1000,"currency":"CNY"}}`, pid)
				resp, err := testClient.Post(caddy.internalURL()+"/v2/payment/wallet/wechat/sale", "application/json", strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("Gate sale %s: %d", pid, resp.StatusCode)
				}
			}
			paid, lost := newPaymentID("rcv"), newPaymentID("rcv-lost")
			fake.dropFinalCallback(lost)
			sale(paid)
			sale(lost)
			// paid: the QR callback and the final one; lost: the QR callback,
			// then its final status from reconciliation.
			var rows []receiverRow
			eventually(t, 30*time.Second, "four stored events", func() (bool, string) {
				rows = receiverRows(t, db)
				return len(rows) >= 4, fmt.Sprintf("%d rows", len(rows))
			})
			waitSettled(t, fake, 3, settleTimeout)

			// Every event Caddy forwarded (as its journal says) is one row,
			// with the fields the receiver took from the body.
			byKey := map[string]receiverRow{}
			for _, r := range rows {
				if _, dup := byKey[r.Key]; dup {
					t.Errorf("event %s stored twice", r.Key)
				}
				byKey[r.Key] = r
				if ok, why := verifyCallbackBody([]byte(r.Body), secret); !ok {
					t.Errorf("stored body of %s does not verify: %s", r.Key, why)
				}
			}
			forwarded := 0
			for _, pid := range []string{paid, lost} {
				tl := receiverTimelineOf(t, s, pid)
				for _, e := range tl.Events {
					if e.Result != "forwarded" {
						continue
					}
					forwarded++
					r, ok := byKey[e.EventKey]
					wantSource, wantOp := e.Kind, e.OperationStatus
					if e.Kind == "status" {
						// The journal reads operation.status; a status event has
						// operations[], of which the receiver takes the last.
						wantOp = "success"
					}
					switch {
					case !ok:
						t.Errorf("%s %s (%s) was forwarded but not stored", pid, e.Kind, e.PaymentStatus)
					case r.PaymentID != pid || r.PaymentStatus != e.PaymentStatus || r.OperationStatus != wantOp ||
						r.OperationType != "sale" || r.Source != wantSource:
						t.Errorf("row %+v for %s event %s/%s", r, e.Kind, e.PaymentStatus, e.OperationStatus)
					}
					if e.AppStatus != 200 {
						t.Errorf("the receiver answered %d to %s %s", e.AppStatus, pid, e.Kind)
					}
				}
			}
			if forwarded != 4 || len(rows) != 4 {
				t.Errorf("%d events forwarded, %d stored; want 4 and 4", forwarded, len(rows))
			}
			if r := rows[len(rows)-1]; r.Source != "status" || r.PaymentID != lost || r.PaymentStatus != "success" {
				t.Errorf("last row %+v, want the lost payment's success from a status event", r)
			}

			// A replay reaches the receiver, which answers 200 and stores nothing.
			key := rows[1].Key
			req, _ := http.NewRequest(http.MethodPost, caddy.internalURL()+"/ecommpay/api/events/"+url.PathEscape(key)+"/replay", strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			resp, err := testClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var replay struct {
				Kind      string `json:"kind"`
				AppStatus int    `json:"app_status"`
			}
			json.NewDecoder(resp.Body).Decode(&replay)
			resp.Body.Close()
			if resp.StatusCode != 200 || replay.Kind != "replay" || replay.AppStatus != 200 {
				t.Errorf("replay: HTTP %d, %+v; want the receiver's 200", resp.StatusCode, replay)
			}
			if n := len(receiverRows(t, db)); n != 4 {
				t.Errorf("%d rows after a replay, want 4", n)
			}

			// What Caddy did not send is refused, not stored.
			resp, err = testClient.Post(fmt.Sprintf("http://127.0.0.1:%d/callback", cfg.App), "application/json", strings.NewReader(rows[0].Body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 400 {
				t.Errorf("a body without X-Ecommpay-Event-Key got %d, want 400", resp.StatusCode)
			}
		})
	}
}

func receiverTimelineOf(t *testing.T, s *stack, pid string) receiverTimeline {
	t.Helper()
	var tl receiverTimeline
	eventually(t, 5*time.Second, "the timeline of "+pid, func() (bool, string) {
		resp, err := testClient.Get(fmt.Sprintf("%s/ecommpay/api/payments/%d/%s", s.caddy.internalURL(), projectID, pid))
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		tl = receiverTimeline{}
		return resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&tl) == nil, resp.Status
	})
	return tl
}
