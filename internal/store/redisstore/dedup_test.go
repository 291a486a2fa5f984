package redisstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/redistest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
	"github.com/redis/go-redis/v9"
)

// newTestRedisStore returns a store on url under a prefix of its own, so
// tests never see each other's keys, and deletes those keys afterwards.
func newTestRedisStore(tb testing.TB, url, prefix string) *Dedup {
	tb.Helper()
	s, err := NewDedup(url, prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		redistest.DeleteKeys(s.client, prefix)
		s.Close()
	})
	return s
}

func testPrefix() string { return "ecommpay-test:" + rand.Text() + ":" }

func TestRedisStore(t *testing.T) {
	url := redistest.URL(t)
	storetest.RunStore(t, storetest.StoreSuite{
		New:    func(t *testing.T) store.Store { return newTestRedisStore(t, url, testPrefix()) },
		Short:  200 * time.Millisecond,
		Elapse: time.Sleep,
	})
}

func TestRedisTwoInstancesOneWinner(t *testing.T) {
	url := redistest.URL(t)
	prefix := testPrefix()
	a := newTestRedisStore(t, url, prefix)
	b := newTestRedisStore(t, url, prefix)
	if a.client == b.client {
		t.Fatal("instances share a client")
	}
	storetest.ClaimRace(t, []store.Store{a, b}, "race", 200)

	// The claim lives in Redis, so either instance can finish it.
	ctx := context.Background()
	tok := storetest.MustClaim(t, a, "handover", store.Claimed)
	storetest.MustClaim(t, b, "handover", store.InFlight)
	if err := b.Commit(ctx, "handover", tok, storetest.TTL); err != nil {
		t.Fatal(err)
	}
	storetest.MustClaim(t, a, "handover", store.Delivered)
}

func TestRedisKeyLayout(t *testing.T) {
	url := redistest.URL(t)
	prefix := testPrefix()
	s := newTestRedisStore(t, url, prefix)
	ctx := context.Background()
	raw := s.client

	tok := storetest.MustClaim(t, s, "p:k", store.Claimed)
	if v := raw.Get(ctx, prefix+"p:k").Val(); v != "i:"+tok {
		t.Fatalf("in-flight value = %q, want %q", v, "i:"+tok)
	}
	if ttl := raw.PTTL(ctx, prefix+"p:k").Val(); ttl <= storetest.Lease-5*time.Second || ttl > storetest.Lease {
		t.Fatalf("in-flight PTTL = %v, want about %v", ttl, storetest.Lease)
	}
	if err := s.Commit(ctx, "p:k", tok, storetest.TTL); err != nil {
		t.Fatal(err)
	}
	if v := raw.Get(ctx, prefix+"p:k").Val(); v != "d" {
		t.Fatalf("delivered value = %q, want \"d\"", v)
	}
	if ttl := raw.PTTL(ctx, prefix+"p:k").Val(); ttl <= storetest.TTL-5*time.Second || ttl > storetest.TTL {
		t.Fatalf("delivered PTTL = %v, want about %v", ttl, storetest.TTL)
	}

	tok = storetest.MustClaim(t, s, "p:r", store.Claimed)
	if err := s.Release(ctx, "p:r", tok); err != nil {
		t.Fatal(err)
	}
	if n := raw.Exists(ctx, prefix+"p:r").Val(); n != 0 {
		t.Fatal("released key still exists")
	}

	// The default prefix.
	d := newTestRedisStore(t, url, "")
	if d.prefix != defaultDedupPrefix || defaultDedupPrefix != "ecommpay:dedupe:" {
		t.Fatalf("default prefix = %q", d.prefix)
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestRedisUnreachableFailsFast(t *testing.T) {
	s, err := NewDedup("redis://"+closedPort(t)+"/0", "")
	if err != nil {
		t.Fatalf("construction needed the network: %v", err)
	}
	defer s.Close()
	ctx := context.Background()

	start := time.Now()
	st, tok, err := s.Claim(ctx, "k", storetest.Lease)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Claim took %v against an unreachable Redis", took)
	}
	if err == nil || st == store.Claimed || tok != "" {
		t.Fatalf("Claim = %v, %q, %v; want an error and no claim", st, tok, err)
	}
	if err := s.Commit(ctx, "k", "t", storetest.TTL); err == nil || errors.Is(err, store.ErrNotOwner) {
		t.Fatalf("Commit = %v, want a connection error", err)
	}
	if err := s.Release(ctx, "k", "t"); err == nil || errors.Is(err, store.ErrNotOwner) {
		t.Fatalf("Release = %v, want a connection error", err)
	}
}

func TestRedisBadURL(t *testing.T) {
	for _, u := range []string{
		"http://127.0.0.1:6379",
		"127.0.0.1:6379",
		"redis+ring://127.0.0.1:6379",
		"unix+cluster:///tmp/redis.sock",
		"redis://:s3cret@127.0.0.1:6379/notadb",
		"redis://:s3cret@127.0.0.1:6379/0/1",
		"redis://:s3cret@127.0.0.1:6379/-1",
		"redis://:s3cret@127.0.0.1:6379/0?bogus=1",
		"redis://:s3cret@127.0.0.1:6379/0?dial_timeout=soon",
		"redis://:s3cret@127.0.0.1:6379/0?pool_size=many",
		"redis://:s3cret@127.0.0.1:6379/0?skip_verify=true",
		"redis://:s3cret@127.0.0.1:6379/0#frag",
		"redis://:s3cret@[::1",
		"redis://:s3cret@127.0.0.1:99999",
		"redis://:s3cret@127.0.0.1:1,:2",
		"redis+cluster://:s3cret@127.0.0.1:1,127.0.0.1:2/3",
		"redis://:s3cret@127.0.0.1:1,127.0.0.1:2/3",
		"redis+sentinel://:s3cret@127.0.0.1:26379",
		"redis+sentinel://127.0.0.1:26379/m?sentinel_password=s3cret&bogus=1",
		"unix://:s3cret@",
		"unix://:s3cret@host/tmp/redis.sock",
	} {
		_, err := NewDedup(u, "")
		if err == nil {
			t.Errorf("%s accepted", u)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error reveals the password: %v", err)
		}
	}
}

func TestRedisURLForms(t *testing.T) {
	tlsTo := func(host string, skip bool) *tls.Config {
		return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: skip}
	}
	for _, c := range []struct {
		url  string
		want redis.UniversalOptions
	}{
		{"redis://127.0.0.1:6379/0", redis.UniversalOptions{Addrs: []string{"127.0.0.1:6379"}}},
		{"redis://redis.internal", redis.UniversalOptions{Addrs: []string{"redis.internal:6379"}}},
		{"redis://u:p%40ss@h:7000/3?dial_timeout=3&read_timeout=500ms&write_timeout=0&max_retries=-1&pool_size=20&client_name=shop",
			redis.UniversalOptions{Addrs: []string{"h:7000"}, Username: "u", Password: "p@ss", DB: 3,
				DialTimeout: 3 * time.Second, ReadTimeout: 500 * time.Millisecond, WriteTimeout: -1,
				MaxRetries: -1, PoolSize: 20, ClientName: "shop"}},
		{"redis://:pw@[::1]:6380?db=2", redis.UniversalOptions{Addrs: []string{"[::1]:6380"}, Password: "pw", DB: 2}},
		{"rediss://:pw@cache.example:6380/1", redis.UniversalOptions{Addrs: []string{"cache.example:6380"}, Password: "pw", DB: 1,
			TLSConfig: tlsTo("cache.example", false)}},
		{"rediss://cache.example?skip_verify=true", redis.UniversalOptions{Addrs: []string{"cache.example:6379"},
			TLSConfig: tlsTo("cache.example", true)}},
		{"unix:///run/redis/redis.sock", redis.UniversalOptions{Addrs: []string{"/run/redis/redis.sock"}}},
		{"unix://:pw@/run/redis/redis.sock?db=4", redis.UniversalOptions{Addrs: []string{"/run/redis/redis.sock"}, Password: "pw", DB: 4}},
		{"redis+cluster://10.0.0.1:7000", redis.UniversalOptions{Addrs: []string{"10.0.0.1:7000"}, IsClusterMode: true}},
		{"redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000/0?max_redirects=5",
			redis.UniversalOptions{Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7000"}, Password: "pw", MaxRedirects: 5, IsClusterMode: true}},
		{"redis://[::1]:7000,[::1]:7001,[::1]:7002", redis.UniversalOptions{Addrs: []string{"[::1]:7000", "[::1]:7001", "[::1]:7002"},
			IsClusterMode: true}},
		{"rediss+cluster://n1.example:7000,n2.example:7000", redis.UniversalOptions{Addrs: []string{"n1.example:7000", "n2.example:7000"},
			IsClusterMode: true, TLSConfig: tlsTo("n1.example", false)}},
		{"redis+sentinel://s1,s2:26380/mymaster", redis.UniversalOptions{Addrs: []string{"s1:26379", "s2:26380"}, MasterName: "mymaster"}},
		{"redis+sentinel://:pw@s1:26379/mymaster/2?sentinel_username=sen&sentinel_password=spw",
			redis.UniversalOptions{Addrs: []string{"s1:26379"}, MasterName: "mymaster", DB: 2, Password: "pw",
				SentinelUsername: "sen", SentinelPassword: "spw"}},
	} {
		got, err := parseRedisURL(c.url)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if !reflect.DeepEqual(*got, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.url, *got, c.want)
		}
	}
}

func TestRedisURLClients(t *testing.T) {
	for url, want := range map[string]string{
		"redis://127.0.0.1:1/0":                      "*redis.Client",
		"unix:///tmp/none.sock":                      "*redis.Client",
		"redis+cluster://127.0.0.1:1":                "*redis.ClusterClient",
		"redis://127.0.0.1:1,127.0.0.1:2":            "*redis.ClusterClient",
		"redis+sentinel://127.0.0.1:1/mymaster":      "*redis.Client", // a failover client
		"redis://127.0.0.1:1/0?read_timeout=5s":      "*redis.Client",
		"rediss+sentinel://127.0.0.1:1,[::1]:2/main": "*redis.Client",
	} {
		s, err := NewDedup(url, "")
		if err != nil {
			t.Errorf("%s: %v", url, err)
			continue
		}
		if got := fmt.Sprintf("%T", s.client); got != want {
			t.Errorf("%s: client %s, want %s", url, got, want)
		}
		if wantTimeout := map[bool]time.Duration{true: 5 * time.Second, false: redisTimeout}[strings.Contains(url, "5s")]; s.timeout != wantTimeout {
			t.Errorf("%s: timeout %v, want %v", url, s.timeout, wantTimeout)
		}
		s.Close()
	}
}

func TestRedisURLRedacted(t *testing.T) {
	for _, u := range []string{
		"redis://user:s3cret@127.0.0.1:6379/0?bogus=1",
		"redis+cluster://:s3cret@[::1]:1,[::1]:2/0?bogus=1",
		"redis+sentinel://s1:1/m?sentinel_password=s3cret&bogus=1",
		"redis+sentinel://s1:1/m?bogus=1&sentinel_password=s3cret",
	} {
		r := redactRedisURL(u)
		if strings.Contains(r, "s3cret") || !strings.Contains(r, "xxxxx") || !strings.Contains(r, "bogus") {
			t.Errorf("redactRedisURL(%s) = %s", u, r)
		}
	}
}

// dropProxy forwards TCP connections to a Redis and drops the reply to the
// first SET that passes through it, closing that connection: Redis applied
// the SET but the client never hears of it.
type dropProxy struct {
	ln      net.Listener
	target  string
	dropped atomic.Bool
}

func startDropProxy(t *testing.T, target string) *dropProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *dropProxy) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	var drop atomic.Bool
	closeBoth := func() { c.Close(); s.Close() }
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if bytes.Contains(bytes.ToLower(buf[:n]), []byte("\r\nset\r\n")) && p.dropped.CompareAndSwap(false, true) {
					drop.Store(true) // before Redis can answer
				}
				if _, err := s.Write(buf[:n]); err != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		closeBoth()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			if drop.Load() {
				break
			}
			if _, err := c.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	closeBoth()
}

// TestRedisClaimSurvivesLostReply: the reply to the claim's SET NX is lost
// after Redis applied it. Whether go-redis retries the SET (which then
// finds the key taken) or gives up with an error, the claim is ours.
func TestRedisClaimSurvivesLostReply(t *testing.T) {
	target := redistest.URL(t)
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	for name, query := range map[string]string{"retried": "", "not retried": "max_retries=-1"} {
		t.Run(name, func(t *testing.T) {
			p := startDropProxy(t, u.Host)
			pu := *u
			pu.Host = p.ln.Addr().String()
			pu.RawQuery = query
			s := newTestRedisStore(t, pu.String(), testPrefix())
			tok := storetest.MustClaim(t, s, "lost", store.Claimed)
			if !p.dropped.Load() {
				t.Fatal("the proxy saw no SET")
			}
			if err := s.Commit(context.Background(), "lost", tok, storetest.TTL); err != nil {
				t.Fatal(err)
			}
			storetest.MustClaim(t, s, "lost", store.Delivered)
		})
	}
}

func BenchmarkRedisClaimCommit(b *testing.B) {
	s := newTestRedisStore(b, redistest.URL(b), testPrefix())
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		claimCommit(b, s, ctx, storetest.Key(i))
	}
}

func BenchmarkRedisClaimCommitParallel(b *testing.B) {
	s := newTestRedisStore(b, redistest.URL(b), testPrefix())
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			claimCommit(b, s, ctx, storetest.Key(int(n.Add(1))))
		}
	})
}

func claimCommit(b *testing.B, s store.Store, ctx context.Context, k string) {
	st, tok, err := s.Claim(ctx, k, time.Minute)
	if err != nil || st != store.Claimed {
		b.Fatal(st, err)
	}
	if err := s.Commit(ctx, k, tok, time.Minute); err != nil {
		b.Fatal(err)
	}
}

// TestRedisURLFormsLive: one redis-server on a TCP port and a Unix socket,
// watched by one Sentinel; each URL form reaches it, in its database.
func TestRedisURLFormsLive(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not in PATH")
		}
		t.Skip("skipping: redis-server not in PATH")
	}
	dir := t.TempDir()
	sock := dir + "/redis.sock"
	port := closedPort(t)
	_, p, _ := net.SplitHostPort(port)
	runRedis(t, bin, "--port", p, "--bind", "127.0.0.1", "--unixsocket", sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir)
	sentinel := closedPort(t)
	_, sp, _ := net.SplitHostPort(sentinel)
	conf := dir + "/sentinel.conf"
	if err := os.WriteFile(conf, []byte("port "+sp+"\nbind 127.0.0.1\ndir "+dir+"\n"+
		"sentinel monitor mymaster 127.0.0.1 "+p+" 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runRedis(t, bin, conf, "--sentinel")
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel, MaxRetries: -1})
	defer sc.Close()
	ctx := context.Background()
	master := redis.NewClient(&redis.Options{Addr: port, MaxRetries: -1})
	defer master.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if addr, err := sc.GetMasterAddrByName(ctx, "mymaster").Result(); err == nil && addr[1] == p &&
			master.Ping(ctx).Err() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the master or the Sentinel did not start")
		}
	}

	for url, db := range map[string]int{
		"redis://" + port + "/3":                       3,
		"unix://" + sock + "?db=4":                     4,
		"redis+sentinel://" + sentinel + "/mymaster/5": 5,
	} {
		prefix := testPrefix()
		s := newTestRedisStore(t, url, prefix)
		tok := storetest.MustClaim(t, s, "k", store.Claimed)
		if err := s.Commit(ctx, "k", tok, storetest.TTL); err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		storetest.MustClaim(t, s, "k", store.Delivered)
		raw := redis.NewClient(&redis.Options{Addr: port, DB: db})
		if v, err := raw.Get(ctx, prefix+"k").Result(); v != "d" {
			t.Errorf("%s: the delivered key is not in db %d: %q, %v", url, db, v, err)
		}
		raw.Close()
	}
}

// runRedis runs redis-server with args until t ends.
func runRedis(t *testing.T, bin string, args ...string) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s %v:\n%s", bin, args, out.String())
		}
	})
}
