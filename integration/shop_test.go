package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// shopProc runs integration/shop/shop.py.
type shopProc struct {
	t         testing.TB
	port      int
	base      string
	env       []string
	dir       string
	logPath   string
	stateFile string
	cmd       *exec.Cmd
	exited    chan struct{}
}

type shopEvent struct {
	Key              string            `json:"key"`
	Count            int               `json:"count"`
	ProjectHeader    string            `json:"project_header"`
	Path             string            `json:"path"`
	RawSHA256        string            `json:"raw_sha256"`
	Verified         bool              `json:"verified"`
	SecretIndex      int               `json:"secret_index"`
	PaymentID        string            `json:"payment_id"`
	PaymentStatus    string            `json:"payment_status"`
	OperationID      int64             `json:"operation_id"`
	OperationType    string            `json:"operation_type"`
	OperationStatus  string            `json:"operation_status"`
	Body             map[string]any    `json:"body"`
	ForwardedHeaders map[string]string `json:"forwarded_headers"`
	Replays          int               `json:"replays"` // arrivals marked X-Ecommpay-Replay: 1
}

type shopPayment struct {
	Statuses   []string       `json:"statuses"`
	Events     []string       `json:"events"`
	LastStatus string         `json:"last_status"`
	QR         map[string]any `json:"qr"`
	QRURL      string         `json:"qr_url"`
	QRData     string         `json:"qr_data"`
	Redirect   map[string]any `json:"redirect"`
}

type shopOutgoing struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Body    map[string]any    `json:"body"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Answer  any               `json:"answer"`
}

type shopState struct {
	Events        map[string]*shopEvent   `json:"events"`
	EventOrder    []string                `json:"event_order"`
	Payments      map[string]*shopPayment `json:"payments"`
	Rejected      []map[string]any        `json:"rejected"`
	CallbackPosts int                     `json:"callback_posts"`
	AnsweredDown  int                     `json:"answered_down"`
	Outgoing      []shopOutgoing          `json:"outgoing"`
	Restarts      int                     `json:"restarts"`
}

// eventsFor lists the shop's events for one payment, in arrival order.
func (s shopState) eventsFor(paymentID string) []*shopEvent {
	var out []*shopEvent
	for _, k := range s.EventOrder {
		if e := s.Events[k]; e != nil && e.PaymentID == paymentID {
			out = append(out, e)
		}
	}
	return out
}

var (
	pythonOnce sync.Once
	pythonExe  string
)

// pythonPath resolves python3 to the interpreter itself once, so that each
// shop start does not go through a version-manager shim (pyenv's costs ~1 s).
func pythonPath(t testing.TB) string {
	t.Helper()
	pythonOnce.Do(func() {
		pythonExe = "python3"
		out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
		if p := strings.TrimSpace(string(out)); err == nil && p != "" {
			pythonExe = p
		}
	})
	return pythonExe
}

// startShop starts the Python shop. port 0 lets it choose.
func startShop(t testing.TB, caddyInternal, secret string, port int, extraEnv ...string) *shopProc {
	t.Helper()
	needTool(t, "python3", "python3")
	dir := t.TempDir()
	s := &shopProc{
		t:         t,
		dir:       dir,
		logPath:   filepath.Join(dir, "shop.log"),
		stateFile: filepath.Join(dir, "state.json"),
	}
	s.env = append(filterEnv(os.Environ(), "SHOP_PORT", "SHOP_CADDY_INTERNAL", "SHOP_VERIFY_SECRET", "SHOP_STATE_FILE", "SHOP_START_DOWN"),
		"SHOP_CADDY_INTERNAL="+caddyInternal,
		"SHOP_VERIFY_SECRET="+secret,
		"SHOP_STATE_FILE="+s.stateFile,
		"PYTHONDONTWRITEBYTECODE=1",
		"PYTHONUNBUFFERED=1",
	)
	s.env = append(s.env, extraEnv...)
	if port == 0 {
		// Not the shop's own bind to port 0: the kernel may hand it a port
		// given to Caddy that Caddy has not bound yet.
		port = freePort(t)
	}
	s.start(port)
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("---- shop log (%s) ----\n%s", s.logPath, tailFile(s.logPath, 60))
		}
	})
	return s
}

func (s *shopProc) start(port int) {
	t := s.t
	t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(repoRoot, "integration", "shop", "shop.py")
	// Reading the script here lets go test's result cache notice edits to it.
	if _, err := os.ReadFile(script); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pythonPath(t), script)
	cmd.Env = append(append([]string(nil), s.env...), fmt.Sprintf("SHOP_PORT=%d", port))
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start shop: %v", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	lines := make(chan string, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			if first {
				lines <- sc.Text()
				first = false
			}
			fmt.Fprintln(logf, "stdout: "+sc.Text())
		}
	}()
	exited := s.exited
	go func() {
		<-readerDone
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	select {
	case line := <-lines:
		var p int
		if _, err := fmt.Sscanf(line, "SHOP LISTENING 127.0.0.1:%d", &p); err != nil {
			t.Fatalf("unexpected first line from shop: %q", line)
		}
		s.port = p
		s.base = fmt.Sprintf("http://127.0.0.1:%d", p)
	case <-s.exited:
		t.Fatalf("shop exited at start:\n%s", tailFile(s.logPath, 40))
	case <-time.After(15 * time.Second):
		t.Fatalf("shop did not start:\n%s", tailFile(s.logPath, 40))
	}
}

func (s *shopProc) stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// restart starts the shop again on the same port (its state file persists).
func (s *shopProc) restart() {
	s.start(s.port)
}

var testClient = &http.Client{Timeout: 20 * time.Second, Transport: newTransport()}

// noRedirectClient does not follow redirects.
var noRedirectClient = &http.Client{
	Timeout:       20 * time.Second,
	Transport:     newTransport(),
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

var (
	transportsMu sync.Mutex
	transports   []*http.Transport
)

// newTransport makes a proxy-less transport whose idle connections
// closeIdleConnections can close.
func newTransport() *http.Transport {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}
	transportsMu.Lock()
	transports = append(transports, tr)
	transportsMu.Unlock()
	return tr
}

// closeIdleConnections closes every idle client connection of the tests.
// A connection a Transport dialled but never used is "new" to the server,
// and Caddy's graceful stop waits up to 5 s for such connections.
func closeIdleConnections() {
	transportsMu.Lock()
	defer transportsMu.Unlock()
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}
}

func (s *shopProc) state(t testing.TB) shopState {
	t.Helper()
	resp, err := testClient.Get(s.base + "/state")
	if err != nil {
		t.Fatalf("shop state: %v", err)
	}
	defer resp.Body.Close()
	var st shopState
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("decode shop state: %v", err)
	}
	return st
}

// call posts a JSON command to the shop and decodes the outgoing record.
func (s *shopProc) call(t testing.TB, path string, body any) shopOutgoing {
	t.Helper()
	data, _ := json.Marshal(body)
	resp, err := testClient.Post(s.base+path, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("shop %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("shop %s: status %d: %s", path, resp.StatusCode, raw)
	}
	var out shopOutgoing
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("shop %s: decode %q: %v", path, raw, err)
	}
	return out
}

func (s *shopProc) admin(t testing.TB, cmd string) {
	t.Helper()
	resp, err := testClient.Post(s.base+"/admin/"+cmd, "application/json", nil)
	if err != nil {
		t.Fatalf("shop admin %s: %v", cmd, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("shop admin %s: status %d", cmd, resp.StatusCode)
	}
}

func (s *shopProc) qrPNG(t testing.TB, paymentID string) []byte {
	t.Helper()
	resp, err := testClient.Get(s.base + "/qr/" + paymentID)
	if err != nil {
		t.Fatalf("shop qr: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("shop has no QR for %s: %d %s", paymentID, resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "image/png") {
		t.Fatalf("shop QR content type %q", ct)
	}
	return data
}
