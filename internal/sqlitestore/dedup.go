package sqlitestore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/bits-and-blooms/bloom/v3"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

// rebuildFilter builds the filter afresh from the unexpired marks in the
// file and those queued, sized for twice their number.
func (s *Store) rebuildFilter(ctx context.Context) (err error) {
	s.mu.Lock()
	s.building, s.built = true, nil
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.building, s.built = false, nil
			s.mu.Unlock()
		}
	}()
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM delivered").Scan(&n); err != nil {
		return err
	}
	s.mu.Lock()
	queued := len(s.marks) + len(s.writing)
	s.mu.Unlock()
	size := uint(max(filterMin, 2*(n+queued)))
	f := bloom.NewWithEstimates(size, filterFP)
	rows, err := s.db.QueryContext(ctx, "SELECT key_hash FROM delivered WHERE expires > ?", s.cfg.Now().UnixNano())
	if err != nil {
		return err
	}
	added := uint(0)
	for rows.Next() {
		var k []byte
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return err
		}
		f.Add(k)
		added++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	for _, k := range s.built {
		f.Add(k[:])
		added++
	}
	for k := range s.marks {
		f.Add(k[:])
		added++
	}
	for k := range s.writing {
		f.Add(k[:])
		added++
	}
	s.filter, s.filterN, s.filterOf = f, added, size
	s.building, s.built = false, nil
	s.mu.Unlock()
	return nil
}

// Healthy reports whether the last transaction succeeded.
func (s *Store) Healthy() bool { return s.healthy.Load() }

// SetOptions changes the bounds; the next transaction applies them.
func (s *Store) SetOptions(o journal.Options) { s.opts.Store(&o) }

// Options returns the bounds in force.
func (s *Store) Options() journal.Options { return *s.opts.Load() }

// Delivered returns the expiry (Unix ns) of k's delivered mark, 0 if it
// has none. A key the filter has never seen, as new callbacks are, costs
// no disk read.
func (s *Store) Delivered(ctx context.Context, k Key) (int64, error) {
	s.mu.Lock()
	if exp, ok := s.marks[k]; ok {
		s.mu.Unlock()
		return exp, nil
	}
	if exp, ok := s.writing[k]; ok {
		s.mu.Unlock()
		return exp, nil
	}
	maybe := s.filter == nil || s.filter.Test(k[:])
	s.mu.Unlock()
	if !maybe {
		return 0, nil
	}
	var exp int64
	err := s.queryRow(ctx, "SELECT expires FROM delivered WHERE key_hash = ?", k[:]).Scan(&exp)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return exp, err
}

// Mark queues a delivered mark of k until exp (Unix ns).
func (s *Store) Mark(ctx context.Context, k Key, exp int64) error {
	return s.enqueue(ctx, func() {
		s.marks[k] = exp
		if s.filter != nil {
			s.filter.Add(k[:])
			s.filterN++
		}
		if s.building {
			s.built = append(s.built, k)
		}
	})
}
