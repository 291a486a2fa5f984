// Package redistest gives tests a Redis: a throwaway redis-server (URL),
// or a Redis Cluster of three masters (StartCluster).
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of three masters on loopback.
type Cluster struct {
	Addrs []string // host:port of each master
	// URL is the cluster's URL in the module's syntax: redis+cluster://...
	URL   string
	procs []*exec.Cmd
	logs  []*bytes.Buffer
}

// StartCluster starts three redis-server processes in cluster mode on
// free loopback ports, joins them with redis-cli --cluster create and
// waits until the cluster is ok. The processes end with tb. Without
// redis-server or redis-cli, tb is skipped, or fails when CI=true.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	server := need(tb, "redis-server")
	cli := need(tb, "redis-cli")
	dir := tb.TempDir()
	var lastErr error
	for range 3 {
		c, err := start(tb, server, cli, dir)
		if err == nil {
			return c
		}
		lastErr = err
	}
	tb.Fatalf("redis cluster did not start: %v", lastErr)
	return nil
}

func need(tb testing.TB, tool string) string {
	tb.Helper()
	bin, err := exec.LookPath(tool)
	if err != nil {
		msg := tool + " not in PATH: install redis-server (Debian: apt-get install redis-server)"
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip("skipping the Redis Cluster test: " + msg)
	}
	return bin
}

// freePorts returns n ports p below 55536 such that p and its cluster bus
// port p+10000 are both free now.
func freePorts(n int) []int {
	var out []int
	for len(out) < n {
		p := 20000 + rand.IntN(30000)
		ok := true
		for _, q := range []int{p, p + 10000} {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

func start(tb testing.TB, server, cli, dir string) (*Cluster, error) {
	c := &Cluster{}
	stop := func() {
		for _, p := range c.procs {
			p.Process.Kill()
			p.Wait()
		}
	}
	for _, port := range freePorts(3) {
		p := strconv.Itoa(port)
		log := &bytes.Buffer{}
		cmd := exec.Command(server, "--port", p, "--bind", "127.0.0.1", "--protected-mode", "yes",
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes-"+p+".conf"),
			"--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			stop()
			return nil, err
		}
		c.procs = append(c.procs, cmd)
		c.logs = append(c.logs, log)
		c.Addrs = append(c.Addrs, "127.0.0.1:"+p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, a := range c.Addrs {
		if err := waitFor(ctx, a, func(n *redis.Client) bool { return n.Ping(ctx).Err() == nil }); err != nil {
			stop()
			return nil, fmt.Errorf("%s did not answer: %v\n%s", a, err, c.log())
		}
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	out, err := exec.CommandContext(ctx, cli, append(args, "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range c.Addrs {
		if err := waitFor(ctx, a, func(n *redis.Client) bool {
			info, err := n.ClusterInfo(ctx).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		}); err != nil {
			stop()
			return nil, fmt.Errorf("%s: cluster not ok: %v\n%s", a, err, c.log())
		}
	}
	c.URL = "redis+cluster://" + strings.Join(c.Addrs, ",")
	tb.Cleanup(func() {
		stop()
		if tb.Failed() {
			tb.Logf("---- redis cluster log ----\n%s", c.log())
		}
	})
	return c, nil
}

// Stop kills master i; the other masters keep their slots.
func (c *Cluster) Stop(i int) {
	c.procs[i].Process.Kill()
	c.procs[i].Wait()
}

func waitFor(ctx context.Context, addr string, ok func(*redis.Client) bool) error {
	n := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1})
	defer n.Close()
	for !ok(n) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (c *Cluster) log() string {
	var b strings.Builder
	for i, l := range c.logs {
		fmt.Fprintf(&b, "%s:\n%s", c.Addrs[i], l.String())
	}
	return b.String()
}
