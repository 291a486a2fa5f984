package ecommpay

import (
	"cmp"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/localstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/redisstore"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// The Caddy side of the stores: one backend per kind and file or URL,
// shared by the handlers that name it and kept across config reloads, and
// the agreement of those handlers on its journal settings.

// storePool shares stores across config reloads: the new config acquires
// the store before the old one releases it, so state survives.
var storePool = caddy.NewUsagePool()

// backendOptions choose and bound a backend.
type backendOptions struct {
	Kind     string // "local" (default), "memory", "redis"
	Path     string // local: the database file ("" = default in caddy.AppDataDir())
	RedisURL string // redis
	MaxKeys  int    // memory: de-dup bound; local: recent deliveries kept in memory
	Journal  journal.Options
	// JournalSet says that Journal was configured, not left to defaults.
	// Handlers of one config that share a store must not set different
	// journal settings; one without settings takes those another set.
	JournalSet bool
	// Config identifies the config being loaded (nil: each acquire is a
	// config of its own); Owner names the handler in errors.
	Config any
	Owner  string
}

// journalChoices records, per store, the journal settings the config
// loaded last chose and which handler chose them.
var journalChoices = struct {
	sync.Mutex
	m map[string]journalChoice
}{m: map[string]journalChoice{}}

type journalChoice struct {
	config any
	opts   journal.Options
	set    bool
	owner  string
}

// chooseJournal returns the journal settings for store key in opts's
// config, or an error when two of its handlers set different ones.
func chooseJournal(key string, opts backendOptions) (journal.Options, error) {
	journalChoices.Lock()
	defer journalChoices.Unlock()
	c, ok := journalChoices.m[key]
	if ok && opts.Config != nil && c.config == opts.Config {
		switch {
		case !opts.JournalSet:
			return c.opts, nil
		case c.set && c.opts.WithDefaults() != opts.Journal.WithDefaults():
			return journal.Options{}, fmt.Errorf("handlers that share a store disagree on its journal: %s sets %s, %s sets %s; "+
				"give them the same journal block, or put it on one of them only",
				c.owner, describeJournal(c.opts), opts.Owner, describeJournal(opts.Journal))
		case c.set:
			return c.opts, nil
		}
	}
	journalChoices.m[key] = journalChoice{config: opts.Config, opts: opts.Journal, set: opts.JournalSet, owner: opts.Owner}
	return opts.Journal, nil
}

// describeJournal writes o as a journal block would.
func describeJournal(o journal.Options) string {
	o = o.WithDefaults()
	return fmt.Sprintf("journal { max_age %s max_size %d%s }", o.MaxAge, o.MaxSize,
		map[bool]string{true: " no_bodies"}[o.NoBodies])
}

// defaultLocalPath is the database file when none is configured.
func defaultLocalPath() string {
	return filepath.Join(caddy.AppDataDir(), "ecommpay", "ecommpay.db")
}

// acquireBackend returns the process-wide backend for opts and a func that
// drops this reference; the last release closes it, which for the local
// backend writes what is queued and closes the file. Handlers with the
// same kind (and file or URL) share one backend, across config reloads too;
// a later acquire's bounds are applied to it in place.
func acquireBackend(opts backendOptions, logger *zap.Logger) (store.Backend, func() error, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	hooks := storeHooks(cmp.Or(opts.Kind, "local"), logger)
	var key string
	var open func() (store.Backend, error)
	switch opts.Kind {
	case "", "local":
		path := opts.Path
		if path == "" {
			path = defaultLocalPath()
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, nil, fmt.Errorf("ecommpay: local store path %s: %w", path, err)
		}
		key = "backend|local|" + abs
		open = func() (store.Backend, error) {
			b, err := localstore.Open(abs, opts.MaxKeys, opts.Journal, hooks)
			if err != nil {
				return nil, err
			}
			// Once per process and file: where the data lives, for backups.
			logger.Info("local store opened", zap.String("path", abs))
			return b, nil
		}
	case "memory":
		key = "backend|memory"
		open = func() (store.Backend, error) { return memstore.New(opts.MaxKeys, opts.Journal, hooks), nil }
	case "redis":
		key = "backend|redis|" + opts.RedisURL
		open = func() (store.Backend, error) {
			b, err := redisstore.New(opts.RedisURL, "", "", opts.Journal, hooks)
			if err != nil {
				return nil, err
			}
			return b, nil
		}
	default:
		return nil, nil, fmt.Errorf("ecommpay: unknown store %q (want local, memory or redis)", opts.Kind)
	}

	chosen, err := chooseJournal(key, opts)
	if err != nil {
		return nil, nil, err
	}
	opts.Journal = chosen
	v, loaded, err := storePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		b, err := open()
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return pooled{b}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	release := func() error {
		var err error
		once.Do(func() { _, err = storePool.Delete(key) })
		return err
	}
	b := v.(pooled).Backend
	if loaded {
		b.Configure(opts.MaxKeys, opts.Journal)
	}
	return b, release, nil
}

// storeHooks connect a backend of kind to the module's metrics and to
// logger.
func storeHooks(kind string, logger *zap.Logger) store.Hooks {
	return store.Hooks{
		Logger: logger,
		Pruned: func(reason string, n int) { journalPrunedTotal.WithLabelValues(reason).Add(float64(n)) },
		Failed: func(op string) { storeErrorsTotal.WithLabelValues(op).Inc() },
		Healthy: func(ok bool) {
			v := 0.0
			if ok {
				v = 1
			}
			storeHealthy.WithLabelValues(kind).Set(v)
		},
	}
}

// pooled lets the usage pool close a backend.
type pooled struct{ store.Backend }

// Destruct implements caddy.Destructor.
func (p pooled) Destruct() error { return p.Close() }
