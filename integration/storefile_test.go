package integration

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStoreFileDamage: whatever happened to the default store's file or
// its directory while Caddy was down, Caddy starts, signs a Payment Page
// URL and forwards a new callback once; its log has an error line naming
// the file, and caddy_ecommpay_store_healthy{store="local"} is 0.
//
// Run as root, the restarted Caddy runs as nobody, so that read-only
// files and directories are read-only to it.
func TestStoreFileDamage(t *testing.T) {
	damages := []struct {
		name   string
		damage func(t *testing.T, dbDir, path string)
	}{
		{"truncated", func(t *testing.T, _, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, min(64<<10, fi.Size()/2)); err != nil {
				t.Fatal(err)
			}
		}},
		{"random first pages", func(t *testing.T, _, path string) {
			b := make([]byte, 16<<10)
			_, _ = rand.Read(b)
			overwriteStart(t, path, b)
		}},
		{"zeroed header", func(t *testing.T, _, path string) {
			overwriteStart(t, path, make([]byte, 4096))
		}},
		{"read-only file", func(t *testing.T, _, path string) {
			if err := os.Chmod(path, 0o444); err != nil {
				t.Fatal(err)
			}
		}},
		{"read-only directory", func(t *testing.T, dbDir, _ string) {
			if err := os.Chmod(dbDir, 0o555); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, d := range damages {
		t.Run(d.name, func(t *testing.T) {
			s := newStack(t, nil)
			first := plainCallback(s, newPaymentID("before"))
			if code, _, _, err := s.fake.postRaw(s.caddy.callbackURL(), first, nil); err != nil || code != http.StatusOK {
				t.Fatalf("first delivery: %d %v", code, err)
			}
			time.Sleep(300 * time.Millisecond) // written
			dbDir := filepath.Join(s.caddy.cmd.Dir, "data", "caddy", "ecommpay")
			path := filepath.Join(dbDir, "ecommpay.db")
			s.caddy = restartDamaged(t, s.caddy, func() { d.damage(t, dbDir, path) })

			// Signing works.
			resp, err := http.Get(s.caddy.internalURL() + "/payment-page?payment_id=" + newPaymentID("sign") +
				"&payment_amount=1000&payment_currency=EUR&customer_id=c1")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "signature") {
				t.Fatalf("payment page after the damage: %d %s", resp.StatusCode, body)
			}
			// A new callback is forwarded once.
			pid := newPaymentID("after")
			cb := plainCallback(s, pid)
			for i, wantDup := range []string{"", "1"} {
				code, hdr, _, err := s.fake.postRaw(s.caddy.callbackURL(), cb, nil)
				if err != nil || code != http.StatusOK || hdr.Get("X-Ecommpay-Duplicate") != wantDup {
					t.Fatalf("delivery %d after the damage: %d %v dup=%q", i+1, code, err, hdr.Get("X-Ecommpay-Duplicate"))
				}
			}
			if evs := s.shop.state(t).eventsFor(pid); len(evs) != 1 || evs[0].Count != 1 {
				t.Fatalf("the shop has %d events for the new payment", len(evs))
			}
			if !s.caddy.logContains(`"file":"` + path + `"`) {
				t.Fatalf("no error line names %s:\n%s", path, tailFile(s.caddy.logPath, 40))
			}
			// A file is moved aside where its directory allows, else the
			// journal runs in memory.
			want := "moved aside"
			if d.name == "read-only directory" {
				want = "runs in memory"
			}
			if !s.caddy.logContains(want) {
				t.Fatalf("the log does not say %q:\n%s", want, tailFile(s.caddy.logPath, 40))
			}
			if v, ok := scrape(t, s.caddy)[`caddy_ecommpay_store_healthy{store="local"}`]; !ok || v != 0 {
				t.Fatalf("store_healthy = %v (present %v), want 0", v, ok)
			}
		})
	}
}

func overwriteStart(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
}

// restartDamaged stops c, runs damage, and starts the same Caddy again on
// the same data directory: as nobody when the test runs as root, so that
// file modes bind it.
func restartDamaged(t *testing.T, c *caddyProc, damage func()) *caddyProc {
	t.Helper()
	closeIdleConnections()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("caddy did not exit on SIGTERM")
	}
	dir := c.cmd.Dir
	cmd := exec.Command(c.cmd.Path, c.cmd.Args[1:]...)
	if os.Geteuid() == 0 {
		const nobody = 65534
		// Everything Caddy needs is nobody's, then damage takes away what
		// it should not have.
		if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, nobody, nobody)
		}); err != nil {
			t.Fatal(err)
		}
		for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
			if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o005 != 0o005 && strings.HasPrefix(d, os.TempDir()) {
				if err := os.Chmod(d, fi.Mode().Perm()|0o055); err != nil {
					t.Fatal(err)
				}
			}
		}
		damage()
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	} else {
		damage()
	}
	logPath := filepath.Join(dir, fmt.Sprintf("caddy-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
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
	t.Cleanup(func() {
		n.stop()
		// t.TempDir's cleanup must be able to remove what nobody made.
		_ = os.Chmod(filepath.Join(dir, "data", "caddy", "ecommpay"), 0o700)
	})
	if err := n.waitReady(20 * time.Second); err != nil {
		t.Fatalf("%s did not come back: %v\n%s", c.name, err, tailFile(logPath, 60))
	}
	n.ready = true
	return n
}

// TestBackupRestore: `caddy ecommpay backup` copies the store of a running
// Caddy; a new Caddy started on the copy lists the same events and still
// knows the delivered callbacks.
func TestBackupRestore(t *testing.T) {
	s := newStack(t, nil)
	var bodies [][]byte
	for range 3 {
		b := plainCallback(s, newPaymentID("bak"))
		bodies = append(bodies, b)
		if code, _, _, err := s.fake.postRaw(s.caddy.callbackURL(), b, nil); err != nil || code != http.StatusOK {
			t.Fatalf("delivery: %d %v", code, err)
		}
	}
	before := consoleEventIDs(t, s.caddy)
	if len(before) < 3 {
		t.Fatalf("the console lists %d events", len(before))
	}
	path := filepath.Join(s.caddy.cmd.Dir, "data", "caddy", "ecommpay", "ecommpay.db")
	backup := filepath.Join(t.TempDir(), "backup.db")
	out, err := exec.Command(caddyBin, "ecommpay", "backup", "--db", path, backup).CombinedOutput()
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	// Restore: in place of the store's file, with Caddy stopped.
	s.caddy = restartDamaged(t, s.caddy, func() {
		for _, ext := range []string{"", "-wal", "-shm"} {
			_ = os.Remove(path + ext)
		}
		data, err := os.ReadFile(backup)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() == 0 {
			_ = os.Chown(path, 65534, 65534)
		}
	})
	if after := consoleEventIDs(t, s.caddy); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("the restored Caddy lists %q, before %q", after, before)
	}
	for _, b := range bodies {
		code, hdr, _, err := s.fake.postRaw(s.caddy.callbackURL(), b, nil)
		if err != nil || code != http.StatusOK || hdr.Get("X-Ecommpay-Duplicate") != "1" {
			t.Fatalf("a callback delivered before the backup: %d %v dup=%q", code, err, hdr.Get("X-Ecommpay-Duplicate"))
		}
	}
	if v := scrape(t, s.caddy)[`caddy_ecommpay_store_healthy{store="local"}`]; v != 1 {
		t.Fatalf("store_healthy = %v on the restored file", v)
	}
}

// consoleEventIDs lists the IDs of the console's events, newest first.
func consoleEventIDs(t *testing.T, c *caddyProc) []string {
	t.Helper()
	resp, err := http.Get(c.internalURL() + "/ecommpay/api/events?limit=100")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Events []struct {
			ID string `json:"id"`
		} `json:"events"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range out.Events {
		ids = append(ids, e.ID)
	}
	return ids
}
