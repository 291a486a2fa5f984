package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

const (
	caddyVersion  = "v2.11.4"
	modulePath    = "github.com/caddy-ecommpay/caddy-ecommpay"
	fakeModuleVer = "v0.0.0-00010101000000-000000000000"
	projectID     = 210
)

var (
	repoRoot      string // absolute path of the module root (parent of integration/)
	caddyBin      string // the binary built in TestMain
	caddyBuildErr error
)

// sourceHash hashes every non-test *.go file, embedded page and asset, and
// go.mod/go.sum of the module (integration/, testdata and hidden folders
// excluded), with the Caddy and Go versions.
func sourceHash(root string) (string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || rel == "integration" || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		// Embedded pages and assets are part of the binary too.
		embedded := strings.HasSuffix(name, ".html") || strings.HasSuffix(name, ".css") || strings.HasSuffix(name, ".js") || strings.HasSuffix(name, ".svg")
		if (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) || name == "go.mod" || name == "go.sum" || embedded {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	h := sha256.New()
	fmt.Fprintf(h, "caddy %s\ngo %s\n", caddyVersion, runtime.Version())
	for _, rel := range files {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.ToSlash(rel), len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// buildCaddy builds Caddy with the module by xcaddy, or reuses the cached
// binary integration/.build/caddy-<hash>. ECOMMPAY_TEST_CADDY overrides it.
func buildCaddy() (string, error) {
	if p := os.Getenv("ECOMMPAY_TEST_CADDY"); p != "" {
		return filepath.Abs(p)
	}
	key, err := sourceHash(repoRoot)
	if err != nil {
		return "", fmt.Errorf("hash sources: %w", err)
	}
	dir := filepath.Join(repoRoot, "integration", ".build")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "caddy-"+key)
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() {
		fmt.Fprintf(os.Stderr, "integration: reusing cached %s\n", bin)
		return bin, nil
	}
	tmpDir, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmpDir)
	out := filepath.Join(tmpDir, "caddy")
	logPath := filepath.Join(dir, "build-"+key+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	fmt.Fprintf(os.Stderr, "integration: building Caddy %s with the module (xcaddy; log %s)...\n", caddyVersion, logPath)
	cmd := exec.CommandContext(ctx, "go", "tool", "xcaddy", "build", caddyVersion,
		"--output", out,
		"--with", modulePath+"@"+fakeModuleVer+"="+repoRoot)
	cmd.Dir = repoRoot
	cmd.Env = filterEnv(os.Environ(), "XCADDY_SETCAP", "XCADDY_SUDO", "XCADDY_RACE_DETECTOR", "XCADDY_DEBUG", "XCADDY_SKIP_CLEANUP")
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Run(); err != nil {
		logf.Sync()
		return "", fmt.Errorf("xcaddy build failed after %s: %v\n%s", time.Since(start).Round(time.Second), err, tailFile(logPath, 60))
	}
	if err := os.Rename(out, bin); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "integration: built %s in %s\n", bin, time.Since(start).Round(time.Second))
	pruneBuilds(dir, bin)
	return bin, nil
}

// pruneBuilds keeps the three newest cached binaries.
func pruneBuilds(dir, keep string) {
	matches, _ := filepath.Glob(filepath.Join(dir, "caddy-*"))
	sort.Slice(matches, func(i, j int) bool {
		a, _ := os.Stat(matches[i])
		b, _ := os.Stat(matches[j])
		if a == nil || b == nil {
			return false
		}
		return a.ModTime().After(b.ModTime())
	})
	for i, m := range matches {
		if i >= 3 && m != keep {
			os.Remove(m)
			os.Remove(strings.Replace(m, "caddy-", "build-", 1) + ".log")
		}
	}
}

func filterEnv(env []string, drop ...string) []string {
	var out []string
outer:
	for _, kv := range env {
		for _, d := range drop {
			if strings.HasPrefix(kv, d+"=") {
				continue outer
			}
		}
		out = append(out, kv)
	}
	return out
}

func tailFile(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = append([]string{fmt.Sprintf("... (%d earlier lines in %s)", len(all)-lines, path)}, all[len(all)-lines:]...)
	}
	return strings.Join(all, "\n")
}

// requireCaddy skips in -short mode and fails when the build failed.
func requireCaddy(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped in -short mode")
	}
	if caddyBuildErr != nil {
		t.Fatalf("Caddy with the module could not be built: %v", caddyBuildErr)
	}
	if caddyBin == "" {
		t.Fatal("Caddy binary missing")
	}
}

// freePort asks the kernel for a free loopback port.
// Processes started by a test bind the ports they are given some time
// later, so a port is handed out once per test binary.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

func freePort(t testing.TB) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		portsMu.Lock()
		fresh := !portsGiven[port]
		portsGiven[port] = true
		portsMu.Unlock()
		if fresh {
			return port
		}
	}
}

// caddyConfig fills caddyfileTemplate.
type caddyConfig struct {
	Admin, Internal, Public int
	Fake, App               int
	Dedupe                  string // "" (the default local store), "memory", "off", "redis redis://..."
	Store                   string // a store line for every handler: "memory", "redis redis://..."; "" for the default
	QR                      string // "image", "off", "url <base>"
	QRSize                  int
	PPAllow, GateAllow      string
	PPRedirect              bool
	OnStoreError            string
	OldSecret               string // a second, older secret for project 210
	TTL                     string // de-dup record lifetime; default 14d
	ForwardTimeout          string // the callback's forward_timeout; default 10s
	CallbackOptions         string // more lines inside the public callback block
	ExtraSites              string // raw Caddyfile sites appended after the two above
	ExtraPorts              []int  // listeners of ExtraSites that startCaddy waits for
	GateProxy               string // lines inside the Gate route's reverse_proxy block
	Debug                   bool
}

var caddyfileTemplate = template.Must(template.New("Caddyfile").Parse(`{
	admin 127.0.0.1:{{.Admin}}
	auto_https off
	http_port {{.Public}}
	default_bind 127.0.0.1
	persist_config off
{{- if .Debug}}
	debug
{{- end}}
}

# internal listener: only the shop talks to it
http://127.0.0.1:{{.Internal}} {
	handle /payment-page {
		ecommpay payment_page {
			project {{.ProjectID}} {env.ECOMMPAY_SECRET}{{if .OldSecret}} {env.ECOMMPAY_OLD_SECRET}{{end}}
			base_url http://127.0.0.1:{{.Fake}}
{{- if .Store}}
			store {{.Store}}
{{- end}}
{{- if .PPAllow}}
			allow {{.PPAllow}}
{{- end}}
		}
	}
{{- if .PPRedirect}}
	handle /payment-page/go {
		ecommpay payment_page {
			project {{.ProjectID}} {env.ECOMMPAY_SECRET}{{if .OldSecret}} {env.ECOMMPAY_OLD_SECRET}{{end}}
			base_url http://127.0.0.1:{{.Fake}}
			redirect
		}
	}
{{- end}}
	handle /v2/* {
		ecommpay gate {
			project {{.ProjectID}} {env.ECOMMPAY_SECRET}{{if .OldSecret}} {env.ECOMMPAY_OLD_SECRET}{{end}}
{{- if .Store}}
			store {{.Store}}
{{- end}}
{{- if .GateAllow}}
			allow {{.GateAllow}}
{{- end}}
		}
		reverse_proxy 127.0.0.1:{{.Fake}}{{if .GateProxy}} {
			{{.GateProxy}}
		}{{end}}
	}
	handle_path /ecommpay/* {
		ecommpay console
	}
}

# public listener: the (fake) platform calls it
http://127.0.0.1:{{.Public}} {
	handle /ecommpay/callback {
		ecommpay callback {
			project {{.ProjectID}} {env.ECOMMPAY_SECRET}{{if .OldSecret}} {env.ECOMMPAY_OLD_SECRET}{{end}}
{{- if .Dedupe}}
			dedupe {{.Dedupe}}
{{- end}}
			ttl {{.TTL}}
			forward_timeout {{.ForwardTimeout}}
			on_store_error {{.OnStoreError}}
			qr {{.QR}}
			qr_size {{.QRSize}}
{{- if .CallbackOptions}}
			{{.CallbackOptions}}
{{- end}}
{{- if .Store}}
			store {{.Store}}
{{- end}}

		}
		reverse_proxy 127.0.0.1:{{.App}} {
			rewrite /callback
		}
	}
	handle /ecommpay/qr/* {
		ecommpay qr {
			project {{.ProjectID}} {env.ECOMMPAY_SECRET}{{if .OldSecret}} {env.ECOMMPAY_OLD_SECRET}{{end}}
		}
	}
}
{{- if .ExtraSites}}

{{.ExtraSites}}
{{- end}}
`))

func renderCaddyfile(t testing.TB, c caddyConfig) string {
	t.Helper()
	if c.QR == "" {
		c.QR = "image"
	}
	if c.QRSize == 0 {
		c.QRSize = 256
	}
	if c.TTL == "" {
		c.TTL = "14d"
	}
	if c.ForwardTimeout == "" {
		c.ForwardTimeout = "10s"
	}
	if c.OnStoreError == "" {
		c.OnStoreError = "reject"
	}
	var buf bytes.Buffer
	data := struct {
		caddyConfig
		ProjectID int
	}{c, projectID}
	if err := caddyfileTemplate.Execute(&buf, data); err != nil {
		t.Fatalf("render Caddyfile: %v", err)
	}
	return buf.String()
}

// caddyProc is one running Caddy.
type caddyProc struct {
	name    string
	cfg     caddyConfig
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
	ready   bool
}

func (c *caddyProc) internalURL() string { return fmt.Sprintf("http://127.0.0.1:%d", c.cfg.Internal) }
func (c *caddyProc) publicURL() string   { return fmt.Sprintf("http://127.0.0.1:%d", c.cfg.Public) }
func (c *caddyProc) callbackURL() string { return c.publicURL() + "/ecommpay/callback" }

// newCaddyConfig allocates the three Caddy ports.
func newCaddyConfig(t testing.TB, fakePort, appPort int) caddyConfig {
	return caddyConfig{
		Admin: freePort(t), Internal: freePort(t), Public: freePort(t),
		Fake: fakePort, App: appPort,
		Debug: os.Getenv("ECOMMPAY_TEST_CADDY_DEBUG") == "1",
	}
}

// startCaddy writes the Caddyfile, runs `caddy run` and waits until the admin
// endpoint and both listeners answer. The log is printed if the test fails.
func startCaddy(t testing.TB, name string, cfg caddyConfig, secret string) *caddyProc {
	t.Helper()
	requireCaddy(t)
	dir := t.TempDir()
	cfPath := filepath.Join(dir, "Caddyfile")
	caddyfile := renderCaddyfile(t, cfg)
	if err := os.WriteFile(cfPath, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "caddy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin, "run", "--config", cfPath, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = append(filterEnv(os.Environ(), "ECOMMPAY_SECRET", "ECOMMPAY_OLD_SECRET", "GOTRACEBACK", "HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"),
		"ECOMMPAY_SECRET="+secret,
		"ECOMMPAY_OLD_SECRET="+cfg.OldSecret,
		"GOTRACEBACK=all",
		"HOME="+dir,
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
	)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start caddy: %v", err)
	}
	c := &caddyProc{name: name, cfg: cfg, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		logf.Close()
		close(c.exited)
	}()
	t.Cleanup(func() {
		if took, forced := c.stop(); forced {
			t.Logf("%s did not stop within 2 s of SIGTERM (forced after %s); goroutines of the module and its stores:\n%s",
				name, took.Round(time.Millisecond), goroutineDump(logPath, "caddy-ecommpay", "go-redis", "Shutdown", "conn).serve"))
		}
		if t.Failed() && c.ready {
			t.Logf("---- Caddyfile of %s ----\n%s", name, caddyfile)
			t.Logf("---- log of %s (%s) ----\n%s", name, logPath, tailFile(logPath, 150))
		}
	})
	if err := c.waitReady(20 * time.Second); err != nil {
		t.Fatalf("%s did not become ready: %v\n---- Caddyfile ----\n%s\n---- log ----\n%s", name, err, caddyfile, tailFile(logPath, 80))
	}
	c.ready = true
	return c
}

func (c *caddyProc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	adminURL := fmt.Sprintf("http://127.0.0.1:%d/config/", c.cfg.Admin)
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			return fmt.Errorf("caddy exited: %v", c.waitErr)
		default:
		}
		resp, err := client.Get(adminURL)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && dialOK(c.cfg.Internal) && dialOK(c.cfg.Public) && allDialOK(c.cfg.ExtraPorts) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("timeout after %s", timeout)
}

func allDialOK(ports []int) bool {
	for _, p := range ports {
		if !dialOK(p) {
			return false
		}
	}
	return true
}

func dialOK(port int) bool {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 500*time.Millisecond)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// stop ends Caddy: SIGTERM; if it is still running after 2 s, SIGABRT (the
// Go runtime writes every goroutine's stack to the log and exits; Caddy
// traps SIGQUIT itself); SIGKILL after 3 s more. It reports how long it took and whether it was forced.
func (c *caddyProc) stop() (time.Duration, bool) {
	select {
	case <-c.exited:
		return 0, false
	default:
	}
	closeIdleConnections()
	start := time.Now()
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return time.Since(start), false
	case <-time.After(2 * time.Second):
	}
	c.cmd.Process.Signal(syscall.SIGABRT)
	select {
	case <-c.exited:
	case <-time.After(3 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
	return time.Since(start), true
}

// goroutineDump picks, from a SIGABRT dump in the log, the goroutines whose
// stacks mention one of the words.
func goroutineDump(path string, words ...string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var out []string
	for _, g := range strings.Split(string(data), "\n\n") {
		if !strings.HasPrefix(g, "goroutine ") {
			continue
		}
		for _, w := range words {
			if strings.Contains(g, w) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// logContains reports whether the Caddy log has a line containing s.
func (c *caddyProc) logContains(s string) bool {
	f, err := os.Open(c.logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			return true
		}
	}
	return false
}
