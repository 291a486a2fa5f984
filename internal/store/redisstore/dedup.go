// Package redisstore is the Redis backend: de-dup state and journal shared
// by every Caddy instance that uses the same Redis (one server, Sentinel or
// Cluster). The payment view is kept by a Lua script that does what
// journal.PaymentView.Apply does; a test holds the two to each other.
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// defaultDedupPrefix is prepended to every de-duplication key in Redis.
const defaultDedupPrefix = "ecommpay:dedupe:"

// redisTimeout is the dial, read and write timeout unless the URL sets one:
// a callback waiting on a sick Redis should soon get a 503 and be retried.
const redisTimeout = 2 * time.Second

// Values stored under prefix+key: "i:<token>" while in flight (PX lease),
// "d" once delivered (PX ttl).
const (
	redisInFlight  = "i:"
	redisDelivered = "d"
)

// Commit and release compare the whole value with "i:<token>", so a stale
// owner never touches a newer claim or a delivered key.
var (
	redisCommit = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
	return 1
end
return 0`)
	redisRelease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0`)
)

// Dedup is a store.Store shared by every Caddy instance using the same
// Redis.
type Dedup struct {
	client  redis.UniversalClient
	prefix  string
	timeout time.Duration // upper bound for one Store call
}

// NewDedup parses rawURL (see parseRedisURL) and returns a store whose
// keys start with prefix (defaultDedupPrefix if empty). It does not
// connect: connections are made on first use, so provisioning works
// without the network.
func NewDedup(rawURL, prefix string) (*Dedup, error) {
	client, timeout, err := newRedisClient(rawURL)
	if err != nil {
		return nil, err
	}
	if prefix == "" {
		prefix = defaultDedupPrefix
	}
	return &Dedup{client: client, prefix: prefix, timeout: timeout}, nil
}

// newRedisClient parses rawURL and builds a universal client (one server,
// Sentinel or Cluster) with this module's timeouts and retries. It also
// returns the longest of the dial, read and write timeouts, the bound for
// one Store call.
func newRedisClient(rawURL string) (redis.UniversalClient, time.Duration, error) {
	opt, err := parseRedisURL(rawURL)
	if err != nil {
		return nil, 0, fmt.Errorf("ecommpay: invalid redis URL %s: %w", redactRedisURL(rawURL), err)
	}
	if opt.DialTimeout == 0 {
		opt.DialTimeout = redisTimeout
	}
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = redisTimeout
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = redisTimeout
	}
	if opt.MaxRetries == 0 {
		// One retry covers a pooled connection that Redis closed; more
		// would only delay the 503.
		opt.MaxRetries = 1
	}
	// Let the request's deadline cut Redis calls short.
	opt.ContextTimeoutEnabled = true
	// Redis Cloud maintenance push notifications are of no use here.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewUniversalClient(opt), max(opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout), nil
}

// parseRedisURL turns a Redis URL into universal client options. The forms:
//
//	redis://[user:password@]host[:port][/db]
//	    one server (port 6379, db 0 by default)
//	rediss://...
//	    the same over TLS
//	unix://[user:password@]/path/to/redis.sock[?db=N]
//	    one server on a Unix socket
//	redis+cluster://[user:password@]host:port[,host:port...]
//	    a Redis Cluster, found from one or more of its nodes
//	redis://host:port,host:port[,...]
//	    also a Redis Cluster: more than one address means Cluster
//	redis+sentinel://[user:password@]host:port[,host:port...]/master[/db]
//	    the master named master, found through these Sentinels (port
//	    26379 by default)
//	rediss+cluster://..., rediss+sentinel://...
//	    the same over TLS
//
// user and password are those of the Redis servers (ACL user or
// requirepass); Sentinels that need their own get them from the
// sentinel_username and sentinel_password parameters. A Cluster has only
// db 0. Every form takes these query parameters:
//
//	db                                        database number (not Cluster)
//	dial_timeout, read_timeout, write_timeout default 2s; seconds or a Go
//	                                          duration (500ms); 0 or -1 disables
//	pool_timeout, conn_max_idle_time, conn_max_lifetime,
//	min_retry_backoff, max_retry_backoff      durations, as above
//	max_retries                               default 1; -1 disables retries
//	pool_size, min_idle_conns, max_idle_conns, max_active_conns,
//	max_redirects, protocol                   numbers
//	client_name                               the name shown by CLIENT LIST
//	skip_verify                               true skips TLS certificate checks
//	sentinel_username, sentinel_password      Sentinel credentials
//
// Unknown parameters are refused, and errors never show the passwords.
func parseRedisURL(raw string) (*redis.UniversalOptions, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New("not a URL")
	}
	base, mode, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" && base != "unix" ||
		mode != "" && (base == "unix" || mode != "cluster" && mode != "sentinel") {
		return nil, fmt.Errorf("unknown scheme %q (want redis, rediss, unix, redis+cluster or redis+sentinel)", scheme)
	}

	// The host part may list several addresses, which url.Parse refuses
	// for IPv6 literals: parse the URL with a stand-in host.
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	hosts, standIn := rest[:end], "h"
	if i := strings.LastIndex(hosts, "@"); i >= 0 {
		standIn = hosts[:i+1] + standIn
		hosts = hosts[i+1:]
	}
	u, err := url.Parse(base + "://" + standIn + rest[end:])
	if err != nil {
		// *url.Error quotes the URL, password included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	if u.Fragment != "" {
		return nil, errors.New("unexpected fragment")
	}

	o := &redis.UniversalOptions{}
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	if err := setRedisParams(o, u.Query()); err != nil {
		return nil, err
	}
	if base == "unix" {
		if hosts != "" || u.Path == "" {
			return nil, errors.New("want unix:///path/to/socket")
		}
		o.Addrs = []string{u.Path}
		return o, nil
	}

	defPort := "6379"
	if mode == "sentinel" {
		defPort = "26379"
	}
	for h := range strings.SplitSeq(hosts, ",") {
		addr, err := redisAddr(h, defPort)
		if err != nil {
			return nil, err
		}
		o.Addrs = append(o.Addrs, addr)
	}
	if base == "rediss" {
		host, _, _ := net.SplitHostPort(o.Addrs[0])
		o.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.TLSConfig != nil}
	} else if o.TLSConfig != nil {
		return nil, errors.New("skip_verify needs rediss")
	}

	path := strings.FieldsFunc(u.Path, func(r rune) bool { return r == '/' })
	if mode == "sentinel" {
		if len(path) == 0 {
			return nil, errors.New("want the master's name as the path: redis+sentinel://host:port/master")
		}
		o.MasterName, path = path[0], path[1:]
	}
	switch {
	case len(path) > 1:
		return nil, fmt.Errorf("invalid path %q", u.Path)
	case len(path) == 1:
		if o.DB, err = strconv.Atoi(path[0]); err != nil || o.DB < 0 {
			return nil, fmt.Errorf("invalid database number %q", path[0])
		}
	}
	if mode == "cluster" || mode == "" && len(o.Addrs) > 1 {
		if o.DB != 0 {
			return nil, errors.New("a Redis Cluster has only database 0")
		}
		o.IsClusterMode = true
	}
	return o, nil
}

// redisAddr checks one host[:port] and adds the default port.
func redisAddr(h, defPort string) (string, error) {
	host, port, err := net.SplitHostPort(h)
	if err != nil { // no port: a bare host or IPv6 literal
		host, port = h, defPort
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			host = h[1 : len(h)-1]
		}
		if strings.ContainsAny(host, "[]") {
			return "", fmt.Errorf("invalid address %q", h)
		}
	}
	if host == "" {
		return "", errors.New("an address has no host")
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", fmt.Errorf("invalid port %q", port)
	}
	return net.JoinHostPort(host, port), nil
}

// setRedisParams applies the query parameters (see parseRedisURL).
func setRedisParams(o *redis.UniversalOptions, q url.Values) error {
	durations := map[string]*time.Duration{
		"dial_timeout": &o.DialTimeout, "read_timeout": &o.ReadTimeout, "write_timeout": &o.WriteTimeout,
		"pool_timeout": &o.PoolTimeout, "conn_max_idle_time": &o.ConnMaxIdleTime, "conn_max_lifetime": &o.ConnMaxLifetime,
		"min_retry_backoff": &o.MinRetryBackoff, "max_retry_backoff": &o.MaxRetryBackoff,
	}
	ints := map[string]*int{
		"db": &o.DB, "max_retries": &o.MaxRetries, "pool_size": &o.PoolSize, "min_idle_conns": &o.MinIdleConns,
		"max_idle_conns": &o.MaxIdleConns, "max_active_conns": &o.MaxActiveConns,
		"max_redirects": &o.MaxRedirects, "protocol": &o.Protocol,
	}
	strs := map[string]*string{
		"client_name": &o.ClientName, "sentinel_username": &o.SentinelUsername, "sentinel_password": &o.SentinelPassword,
	}
	for name, vs := range q {
		v := vs[len(vs)-1]
		switch {
		case durations[name] != nil:
			d, err := parseRedisDuration(v)
			if err != nil {
				return fmt.Errorf("invalid %s %q", name, v)
			}
			*durations[name] = d
		case ints[name] != nil:
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("invalid %s %q", name, v)
			}
			*ints[name] = n
		case strs[name] != nil:
			*strs[name] = v
		case name == "skip_verify":
			skip, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("invalid skip_verify %q", v)
			}
			if skip {
				o.TLSConfig = &tls.Config{} // a mark, replaced by parseRedisURL
			}
		default:
			return fmt.Errorf("unknown parameter %q", name)
		}
	}
	return nil
}

// parseRedisDuration reads whole seconds or a Go duration; 0 or less
// disables the timeout (-1 for go-redis).
func parseRedisDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if n, nerr := strconv.Atoi(v); nerr == nil {
		d, err = time.Duration(n)*time.Second, nil
	}
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		d = -1
	}
	return d, nil
}

// redactRedisURL hides the password and sentinel_password of a Redis URL.
func redactRedisURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return "(unparsable)"
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if i := strings.LastIndex(rest[:end], "@"); i >= 0 {
		if user, _, hasPass := strings.Cut(rest[:i], ":"); hasPass {
			rest = user + ":xxxxx" + rest[i:]
		}
	}
	return scheme + "://" + redisSecretParam.ReplaceAllString(rest, "${1}xxxxx")
}

var redisSecretParam = regexp.MustCompile(`([?&]sentinel_password=)[^&#]*`)

// Claim implements Store with SET NX PX; when the key exists, a GET tells
// in flight from delivered. A GET that finds this claim's own token means
// the SET was applied but its reply was lost (go-redis retried it, or it
// failed after Redis ran it): the claim is ours.
func (s *Dedup) Claim(ctx context.Context, key string, lease time.Duration) (store.ClaimState, string, error) {
	if lease <= 0 {
		return store.InFlight, "", store.ErrBadDuration
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	k := s.prefix + key
	token := rand.Text()
	mine := redisInFlight + token
	// The key can vanish between SET and GET (released or expired); then
	// the claim is simply tried again.
	for range 3 {
		ok, setErr := s.client.SetNX(ctx, k, mine, roundMs(lease)).Result()
		if ok {
			return store.Claimed, token, nil
		}
		v, err := s.client.Get(ctx, k).Result()
		switch {
		case setErr != nil && (err != nil || v != mine):
			// Nothing shows that the SET was applied.
			return store.InFlight, "", fmt.Errorf("ecommpay: redis claim: %w", setErr)
		case errors.Is(err, redis.Nil):
			continue
		case err != nil:
			return store.InFlight, "", fmt.Errorf("ecommpay: redis claim: %w", err)
		case v == mine:
			return store.Claimed, token, nil
		case v == redisDelivered:
			return store.Delivered, "", nil
		default:
			return store.InFlight, "", nil
		}
	}
	// Still churning: report it busy, the provider will retry.
	return store.InFlight, "", nil
}

// Commit implements Store.
func (s *Dedup) Commit(ctx context.Context, key, token string, ttl time.Duration) error {
	if ttl <= 0 {
		return store.ErrBadDuration
	}
	return s.ownerScript(ctx, redisCommit, "commit", key, token, roundMs(ttl).Milliseconds())
}

// Release implements Store.
func (s *Dedup) Release(ctx context.Context, key, token string) error {
	return s.ownerScript(ctx, redisRelease, "release", key, token)
}

func (s *Dedup) ownerScript(ctx context.Context, script *redis.Script, op, key, token string, args ...any) error {
	if token == "" {
		return store.ErrNotOwner
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n, err := script.Run(ctx, s.client, []string{s.prefix + key}, append([]any{redisInFlight + token}, args...)...).Int()
	if err != nil {
		return fmt.Errorf("ecommpay: redis %s: %w", op, err)
	}
	if n == 0 {
		return store.ErrNotOwner
	}
	return nil
}

// roundMs rounds d up to whole milliseconds, Redis's PX resolution, so that
// a lease never ends early.
func roundMs(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// Close closes the client.
func (s *Dedup) Close() error { return s.client.Close() }

// Client is the store's Redis client, for tests that clean up after
// themselves.
func (s *Dedup) Client() redis.UniversalClient { return s.client }

// Interface guards
var _ store.Store = (*Dedup)(nil)
