package ecommpay

import (
	"encoding/binary"
	"errors"
	"time"
	"unsafe"
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
	// Fields added later follow, so that entries written before them
	// still read.
	dst = binary.AppendVarint(dst, int64(e.EcommpayStatus))
	dst = binary.AppendUvarint(dst, uint64(len(e.Reason)))
	return append(dst, e.Reason...)
}

// decodeRecord decodes the entry stored under id. Strings are copied out
// of v, which bbolt owns.
func decodeRecord(id, v []byte) (e journalEvent, bodyID string, err error) {
	return decodeRecordAs(id, v, func(b []byte) string { return string(b) })
}

// decodeRecordBorrowed is decodeRecord with strings that share id's and
// v's bytes: for a caller that is done with e before they change and keeps
// none of its strings. It allocates nothing.
func decodeRecordBorrowed(id, v []byte) (e journalEvent, bodyID string, err error) {
	return decodeRecordAs(id, v, func(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) })
}

func decodeRecordAs(id, v []byte, str func([]byte) string) (e journalEvent, bodyID string, err error) {
	if len(v) < 10 || v[0] != recordFormat {
		return e, "", errBadRecord
	}
	e.ID = str(id)
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
	for _, f := range [...]*string{&e.Kind, &e.ProjectID, &e.PaymentID, &e.OperationID, &e.OperationType,
		&e.OperationStatus, &e.PaymentStatus, &e.EventKey, &e.Result, &e.Path, &e.Amount, &e.Currency, &e.Method, &bodyID} {
		n, k := binary.Uvarint(v)
		if k <= 0 || n > uint64(len(v)-k) {
			return e, "", errBadRecord
		}
		*f, v = str(v[k:k+int(n)]), v[k+int(n):]
	}
	if len(v) == 0 {
		return e, bodyID, nil // written before the later fields
	}
	n, k := binary.Varint(v)
	if k <= 0 {
		return e, "", errBadRecord
	}
	e.EcommpayStatus, v = int(n), v[k:]
	m, k := binary.Uvarint(v)
	if k <= 0 || m > uint64(len(v)-k) {
		return e, "", errBadRecord
	}
	e.Reason = str(v[k : k+int(m)])
	return e, bodyID, nil
}
