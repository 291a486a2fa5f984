package ecommpay

import (
	"encoding/binary"
	"errors"
	"time"
)

// The local store's entry format: a version byte, flags, the time, three
// numbers and the strings, each length-prefixed. Writing and reading it
// costs a fraction of encoding/json, and the writer does it for every
// entry.

const (
	recordFormat = 1
	// recordVerified is the flag of a verified entry.
	recordVerified = 1
)

var errBadRecord = errors.New("malformed journal entry")

// appendRecord encodes e (its Body apart) and the ID of the entry under
// which its event key's body is stored ("" for none).
func appendRecord(dst []byte, e *journalEvent, bodyID string) []byte {
	var flags byte
	if e.Verified {
		flags |= recordVerified
	}
	dst = append(dst, recordFormat, flags)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Time.UnixNano()))
	dst = binary.AppendVarint(dst, int64(e.Status))
	dst = binary.AppendVarint(dst, int64(e.AppStatus))
	dst = binary.AppendVarint(dst, e.AppLatencyMS)
	for _, s := range [...]string{e.Kind, e.ProjectID, e.PaymentID, e.OperationID, e.OperationType,
		e.OperationStatus, e.PaymentStatus, e.EventKey, e.Result, e.Path, e.Amount, e.Currency, e.Method, bodyID} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	return dst
}

// decodeRecord decodes the entry stored under id. Strings are copied out
// of v, which bbolt owns; intern, if set, shares the common ones.
func decodeRecord(id, v []byte, intern func([]byte) string) (e journalEvent, bodyID string, err error) {
	if len(v) < 10 || v[0] != recordFormat {
		return e, "", errBadRecord
	}
	e.ID = string(id)
	e.Verified = v[1]&recordVerified != 0
	e.Time = time.Unix(0, int64(binary.BigEndian.Uint64(v[2:10]))).UTC()
	v = v[10:]
	var nums [3]int64
	for i := range nums {
		n, k := binary.Varint(v)
		if k <= 0 {
			return e, "", errBadRecord
		}
		nums[i], v = n, v[k:]
	}
	e.Status, e.AppStatus, e.AppLatencyMS = int(nums[0]), int(nums[1]), nums[2]
	plain := func(b []byte) string { return string(b) }
	if intern == nil {
		intern = plain
	}
	for i, f := range [...]*string{&e.Kind, &e.ProjectID, &e.PaymentID, &e.OperationID, &e.OperationType,
		&e.OperationStatus, &e.PaymentStatus, &e.EventKey, &e.Result, &e.Path, &e.Amount, &e.Currency, &e.Method, &bodyID} {
		n, k := binary.Uvarint(v)
		if k <= 0 || n > uint64(len(v)-k) {
			return e, "", errBadRecord
		}
		s := v[k : k+int(n)]
		v = v[k+int(n):]
		switch i {
		case 2, 3, 7, 13: // payment, operation, event key, body ID: distinct per entry
			*f = plain(s)
		default:
			*f = intern(s)
		}
	}
	return e, bodyID, nil
}

// interner shares the strings that repeat across entries (kinds, results,
// statuses, projects, currencies), up to a bound, so that an index of many
// payments holds one copy of each.
type interner map[string]string

const internMax = 4096

func (m interner) bytes(b []byte) string {
	if s, ok := m[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(m) < internMax && len(s) <= 64 {
		m[s] = s
	}
	return s
}

func (m interner) str(s string) string {
	if t, ok := m[s]; ok {
		return t
	}
	if len(m) < internMax && len(s) <= 64 {
		s = string([]byte(s)) // not a slice of a larger string
		m[s] = s
	}
	return s
}
