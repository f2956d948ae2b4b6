package bench

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver for the store's own connection

	"github.com/abproxy/abproxy/recorder"
)

// store is bench's side of the SQLite file. Runs are created and requests
// written (without a proxy) through a recorder.Recorder; one more write
// connection of its own updates what the recorder has no call for: a run's
// final times and metadata, and the client_* columns of the proxy's rows.
type store struct {
	path string
	rec  *recorder.Recorder
	db   *sql.DB // one write connection
}

// openStore opens the database. Behind a proxy the file must already exist
// (the proxy created it); it is not created by mistake elsewhere.
func openStore(path string, proxy bool) (*store, error) {
	if proxy {
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("--db %s does not exist, but the target is an abproxy proxy: pass the proxy's database file with --db", path)
		}
		if err == nil && st.IsDir() {
			return nil, fmt.Errorf("--db %s is a directory, not a database file", path)
		}
	}
	rec, err := recorder.Open(recorder.Options{Path: path})
	if err != nil {
		return nil, err
	}
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	db, err := sql.Open("sqlite3", "file:"+esc+"?mode=rw&_busy_timeout=10000&_txlock=immediate")
	if err != nil {
		rec.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	return &store{path: path, rec: rec, db: db}, nil
}

func (s *store) close() error {
	err := s.db.Close()
	if cerr := s.rec.Close(); cerr != nil {
		err = cerr
	}
	return err
}

// existing returns the first of names that is already a run in the file.
func (s *store) existing(names []string) (string, error) {
	for _, n := range names {
		var one int
		err := s.db.QueryRow(`SELECT 1 FROM runs WHERE name = ?`, n).Scan(&one)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", fmt.Errorf("%s: %w", s.path, err)
		}
	}
	return "", nil
}

// createRun creates a run row; it fails if the name exists.
func (s *store) createRun(run recorder.Run) (int64, error) {
	if n, err := s.existing([]string{run.Name}); err != nil {
		return 0, err
	} else if n != "" {
		return 0, fmt.Errorf("run %q already exists in %s", n, s.path)
	}
	return s.rec.EnsureRun(run)
}

// finishRun stores a run's final start and end times and metadata.
func (s *store) finishRun(name string, startedNS, endedNS int64, meta any) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("run %q metadata: %w", name, err)
	}
	_, err = s.db.Exec(`UPDATE runs SET started_ns = coalesce(?, started_ns), ended_ns = ?, meta = ? WHERE name = ?`,
		nullInt(startedNS), nullInt(endedNS), string(b), name)
	if err != nil {
		return fmt.Errorf("%s: update run %q: %w", s.path, name, err)
	}
	return nil
}

// flush waits until the recorder has written every submitted row.
func (s *store) flush(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.rec.Flush(ctx)
}

// maxRowID is the largest requests rowid now, so a later search for a
// fresh row can skip the older ones (requests.id has no index).
func (s *store) maxRowID() int64 {
	var n sql.NullInt64
	_ = s.db.QueryRow(`SELECT max(rowid) FROM requests`).Scan(&n)
	return n.Int64
}

// waitForID waits until the proxy has written the row with id after
// rowid, polling, up to timeout.
func (s *store) waitForID(ctx context.Context, id string, after int64, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		var n int
		err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM requests WHERE rowid > ? AND id = ?`, after, id).Scan(&n)
		if err != nil {
			return false, fmt.Errorf("%s: %w", s.path, err)
		}
		if n > 0 {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ProxyMatch is how bench's client-side times joined the proxy's rows.
type ProxyMatch struct {
	Matched   int `json:"matched"`   // requests whose proxy row got the client times
	Unmatched int `json:"unmatched"` // requests with no proxy row within --match-timeout
	// Overhead is what the proxy added, per request: the client-side
	// latency minus the proxy's own (TTFT and E2E), in milliseconds.
	TTFTOverhead Dist `json:"ttft_overhead_ms"`
	E2EOverhead  Dist `json:"e2e_overhead_ms"`
}

// match writes the client-side times of rs into the proxy's rows of run
// runID (client_start_ns, client_first_token_ns, client_end_ns), matching
// by the proxy's request id. The proxy writes its rows asynchronously from
// another process, so rows not there yet are retried until timeout.
func (s *store) match(ctx context.Context, runID int64, rs []Result, timeout time.Duration) (ProxyMatch, error) {
	var m ProxyMatch
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return m, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `CREATE TEMP TABLE IF NOT EXISTS bench_client(
		id TEXT PRIMARY KEY, s INTEGER, f INTEGER, e INTEGER)`); err != nil {
		return m, fmt.Errorf("%s: %w", s.path, err)
	}
	if _, err := conn.ExecContext(ctx, `DELETE FROM temp.bench_client`); err != nil {
		return m, fmt.Errorf("%s: %w", s.path, err)
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return m, fmt.Errorf("%s: %w", s.path, err)
	}
	ins, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO temp.bench_client(id, s, f, e) VALUES (?, ?, ?, ?)`)
	if err != nil {
		tx.Rollback()
		return m, fmt.Errorf("%s: %w", s.path, err)
	}
	want := 0
	for i := range rs {
		r := &rs[i]
		if r.Warmup {
			continue
		}
		if r.ProxyID == "" {
			m.Unmatched++ // the proxy never answered with an id (e.g. unreachable)
			continue
		}
		if _, err := ins.ExecContext(ctx, r.ProxyID, nullInt(r.StartNS), nullInt(r.FirstTokenNS), nullInt(r.EndNS)); err != nil {
			tx.Rollback()
			return m, fmt.Errorf("%s: %w", s.path, err)
		}
		want++
	}
	ins.Close()
	if err := tx.Commit(); err != nil {
		return m, fmt.Errorf("%s: %w", s.path, err)
	}
	deadline := time.Now().Add(timeout)
	for want > 0 {
		matched, err := s.matchOnce(ctx, conn, runID)
		if err != nil {
			return m, err
		}
		m.Matched += matched
		want -= matched
		if want == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.Unmatched += want
	if m.Matched > 0 {
		m.TTFTOverhead, m.E2EOverhead, err = s.overhead(ctx, conn, runID)
	}
	return m, err
}

// matchOnce updates the rows that are there now and forgets their ids.
func (s *store) matchOnce(ctx context.Context, conn *sql.Conn, runID int64) (int, error) {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", s.path, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	rows, err := tx.QueryContext(ctx, `UPDATE requests
		SET client_start_ns = c.s, client_first_token_ns = c.f, client_end_ns = c.e
		FROM temp.bench_client AS c
		WHERE requests.run_id = ? AND requests.role = 'primary' AND requests.id = c.id
		RETURNING requests.id`, runID)
	if err != nil {
		return 0, fmt.Errorf("%s: match client times: %w", s.path, err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("%s: match client times: %w", s.path, err)
	}
	del, err := tx.PrepareContext(ctx, `DELETE FROM temp.bench_client WHERE id = ?`)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		if _, err := del.ExecContext(ctx, id); err != nil {
			return 0, err
		}
	}
	del.Close()
	return len(ids), tx.Commit()
}

// overhead compares the client's latencies with the proxy's per request.
func (s *store) overhead(ctx context.Context, conn *sql.Conn, runID int64) (ttft, e2e Dist, err error) {
	rows, err := conn.QueryContext(ctx, `SELECT
		(client_first_token_ns - client_start_ns) - (first_token_ns - start_ns),
		(client_end_ns - client_start_ns) - (end_ns - start_ns)
		FROM requests WHERE run_id = ? AND role = 'primary' AND client_start_ns IS NOT NULL`, runID)
	if err != nil {
		return ttft, e2e, fmt.Errorf("%s: %w", s.path, err)
	}
	defer rows.Close()
	var ts, es []float64
	for rows.Next() {
		var t, e sql.NullInt64
		if err := rows.Scan(&t, &e); err != nil {
			return ttft, e2e, err
		}
		if t.Valid {
			ts = append(ts, ms(t.Int64))
		}
		if e.Valid {
			es = append(es, ms(e.Int64))
		}
	}
	return newDist(ts), newDist(es), rows.Err()
}

func nullInt(v int64) any {
	if v == 0 {
		return nil
	}
	return v
}
