package ecommpay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// DefaultRedisPrefix is prepended to every de-duplication key in Redis.
const DefaultRedisPrefix = "ecommpay:dedupe:"

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

// redisStore is a Store shared by every Caddy instance using the same Redis.
type redisStore struct {
	client  *redis.Client
	prefix  string
	timeout time.Duration // upper bound for one Store call
}

// newRedisStore parses url (redis://, rediss:// or unix://, see
// redis.ParseURL) and returns a store whose keys start with prefix
// (DefaultRedisPrefix if empty). It does not connect: connections are made
// on first use, so provisioning works without the network.
func newRedisStore(rawURL, prefix string) (*redisStore, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		// *url.Error quotes the whole URL, password included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("ecommpay: invalid redis URL %s: %w", redactURL(rawURL), err)
	}
	if prefix == "" {
		prefix = DefaultRedisPrefix
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
	opt.DialerRetries = 1
	// Let the request's deadline cut Redis calls short.
	opt.ContextTimeoutEnabled = true
	// Redis Cloud maintenance push notifications are of no use here.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}

	return &redisStore{
		client:  redis.NewClient(opt),
		prefix:  prefix,
		timeout: max(opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout),
	}, nil
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// Claim implements Store with SET NX PX; when the key exists, a GET tells
// in flight from delivered.
func (s *redisStore) Claim(ctx context.Context, key string, lease time.Duration) (ClaimState, string, error) {
	if lease <= 0 {
		return InFlight, "", errBadDuration
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	k := s.prefix + key
	token := rand.Text()
	// The key can vanish between SET and GET (released or expired); then
	// the claim is simply tried again.
	for range 3 {
		ok, err := s.client.SetNX(ctx, k, redisInFlight+token, roundMs(lease)).Result()
		if err != nil {
			return InFlight, "", fmt.Errorf("ecommpay: redis claim: %w", err)
		}
		if ok {
			return Claimed, token, nil
		}
		v, err := s.client.Get(ctx, k).Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue
		case err != nil:
			return InFlight, "", fmt.Errorf("ecommpay: redis claim: %w", err)
		case v == redisDelivered:
			return Delivered, "", nil
		default:
			return InFlight, "", nil
		}
	}
	// Still churning: report it busy, the provider will retry.
	return InFlight, "", nil
}

// Commit implements Store.
func (s *redisStore) Commit(ctx context.Context, key, token string, ttl time.Duration) error {
	if ttl <= 0 {
		return errBadDuration
	}
	return s.ownerScript(ctx, redisCommit, "commit", key, token, roundMs(ttl).Milliseconds())
}

// Release implements Store.
func (s *redisStore) Release(ctx context.Context, key, token string) error {
	return s.ownerScript(ctx, redisRelease, "release", key, token)
}

func (s *redisStore) ownerScript(ctx context.Context, script *redis.Script, op, key, token string, args ...any) error {
	if token == "" {
		return ErrNotOwner
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	n, err := script.Run(ctx, s.client, []string{s.prefix + key}, append([]any{redisInFlight + token}, args...)...).Int()
	if err != nil {
		return fmt.Errorf("ecommpay: redis %s: %w", op, err)
	}
	if n == 0 {
		return ErrNotOwner
	}
	return nil
}

// roundMs rounds d up to whole milliseconds, Redis's PX resolution, so that
// a lease never ends early.
func roundMs(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// Destruct implements caddy.Destructor by closing the client.
func (s *redisStore) Destruct() error { return s.client.Close() }

// Interface guards
var (
	_ Store            = (*redisStore)(nil)
	_ caddy.Destructor = (*redisStore)(nil)
)
