// Package testutil holds helpers that tests in several packages share.
// Only tests import it.
package testutil

import (
	"bytes"
	"database/sql"
	"sync"
	"testing"

	"github.com/abproxy/abproxy/recorder"
)

// SyncBuffer is a bytes.Buffer that one goroutine may write (a sim's truth
// file, a log) while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Bytes returns a copy of what has been written so far.
func (s *SyncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// OpenDB opens an abproxy database read-only for assertions and closes it
// when the test ends.
func OpenDB(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	db, err := recorder.OpenReadOnly(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// String returns what has been written so far.
func (s *SyncBuffer) String() string { return string(s.Bytes()) }
