package redistest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// URL returns ECOMMPAY_TEST_REDIS_URL, or starts a throwaway
// redis-server on a free loopback port that is killed when tb ends. Without
// redis-server the test is skipped, except under CI=true where it fails.
func URL(tb testing.TB) string {
	tb.Helper()
	if u := os.Getenv("ECOMMPAY_TEST_REDIS_URL"); u != "" {
		return u
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not in PATH and ECOMMPAY_TEST_REDIS_URL unset: " +
			"install redis-server or point ECOMMPAY_TEST_REDIS_URL at a Redis"
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip("skipping Redis tests: " + msg)
	}
	// The free port can be taken before redis binds it; try a few.
	var lastOut string
	for range 3 {
		if u, out, ok := startRedis(tb, bin); ok {
			return u
		} else {
			lastOut = out
		}
	}
	tb.Fatalf("redis-server did not start:\n%s", lastOut)
	return ""
}

func startRedis(tb testing.TB, bin string) (url, output string, ok bool) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()

	var out bytes.Buffer
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", tb.TempDir(), "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}

	url = "redis://127.0.0.1:" + port + "/0"
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		select {
		case <-exited:
			return "", out.String(), false
		default:
		}
		if c.Ping(context.Background()).Err() == nil {
			tb.Cleanup(stop)
			return url, "", true
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	return "", out.String(), false
}

// DeleteKeys deletes the keys starting with prefix, on every master
// of a cluster.
func DeleteKeys(c redis.UniversalClient, prefix string) {
	ctx := context.Background()
	del := func(ctx context.Context, n redis.UniversalClient) error {
		iter := n.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			n.Del(ctx, iter.Val())
		}
		return iter.Err()
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return del(ctx, n) })
		return
	}
	del(ctx, c)
}
