package recorder

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
)

// migrations are the schema, as an ordered list of forward-only steps:
// migrations[i] takes a file from version i to version i+1. Never edit a
// step that has shipped; append a new one. Each step runs in the same
// transaction as the schema_version row that records it.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE schema_version (
	version    INTEGER PRIMARY KEY, -- migration step applied; the file's version is MAX(version)
	applied_ns INTEGER NOT NULL     -- when it was applied, Unix ns
);

CREATE TABLE runs (
	id           INTEGER PRIMARY KEY,
	name         TEXT    NOT NULL UNIQUE,
	kind         TEXT    NOT NULL,  -- bench | live | mirror
	backend      TEXT,              -- NULL when the run spans backends
	scenario     TEXT,
	concurrency  INTEGER,
	request_rate REAL,
	started_ns   INTEGER,
	ended_ns     INTEGER,           -- NULL while running
	meta         TEXT               -- JSON
);

CREATE TABLE requests (
	id                    TEXT    NOT NULL, -- also sent upstream as X-Request-Id
	run_id                INTEGER NOT NULL REFERENCES runs(id),
	backend               TEXT,
	role                  TEXT    NOT NULL, -- primary | shadow
	pair_id               TEXT,             -- NULL unless mirrored
	endpoint              TEXT,
	model                 TEXT,
	stream                INTEGER NOT NULL, -- 0 | 1
	status                INTEGER,          -- NULL when no HTTP status
	error                 TEXT,             -- NULL on success
	error_detail          TEXT,
	start_ns              INTEGER,
	upstream_ns           INTEGER,
	first_byte_ns         INTEGER,
	first_token_ns        INTEGER,          -- NULL when no token came
	end_ns                INTEGER,
	prompt_tokens         INTEGER,          -- NULL when unknown
	completion_tokens     INTEGER,          -- NULL when unknown
	tokens_source         TEXT,             -- usage | tokenizer | estimate | chunks
	chunks                INTEGER NOT NULL, -- number of content-bearing chunks
	chunk_ns              BLOB,             -- uvarint deltas, see package doc
	finish_reason         TEXT,
	output_sha256         TEXT,
	prompt_sha256         TEXT,
	bytes_in              INTEGER NOT NULL,
	bytes_out             INTEGER NOT NULL,
	client_start_ns       INTEGER,
	client_first_token_ns INTEGER,
	client_end_ns         INTEGER
);
CREATE INDEX requests_run_id ON requests(run_id);
CREATE INDEX requests_pair_id ON requests(pair_id) WHERE pair_id IS NOT NULL;

CREATE TABLE bodies (
	request_id TEXT NOT NULL, -- requests.id
	prompt     TEXT,
	output     TEXT
);
CREATE INDEX bodies_request_id ON bodies(request_id);

-- Per-request latencies in milliseconds with DESIGN.md's definitions, so a
-- SQL user need not repeat them. NULL where the inputs are NULL.
CREATE VIEW request_timings AS
SELECT
	id, run_id, backend, role, pair_id, model, stream, status, error,
	prompt_tokens, completion_tokens,
	(first_token_ns - start_ns) / 1e6 AS ttft_ms,
	(end_ns - start_ns) / 1e6         AS e2e_ms,
	CASE WHEN completion_tokens > 1
		THEN (end_ns - first_token_ns) / 1e6 / (completion_tokens - 1)
	END                               AS tpot_ms,
	(client_first_token_ns - client_start_ns) / 1e6 AS client_ttft_ms,
	(client_end_ns - client_start_ns) / 1e6         AS client_e2e_ms
FROM requests;
`,
	// 2: mirroring: skipped shadow copies on the primary, output agreement on the shadow.
	`
ALTER TABLE requests ADD COLUMN shadows_skipped      INTEGER; -- primary: shadow copies skipped (max_shadow_inflight reached); NULL = none
ALTER TABLE requests ADD COLUMN output_identical     INTEGER; -- shadow: 1 when its output equals the primary's, 0 when not, NULL unknown
ALTER TABLE requests ADD COLUMN common_prefix_chars  INTEGER; -- shadow: common prefix with the primary's output, in characters
ALTER TABLE requests ADD COLUMN common_prefix_tokens INTEGER; -- shadow: leading chunks (tokens) with equal text; NULL when not streamed
`,
	// 3: server-side metrics scraped from each backend's Prometheus /metrics.
	`
CREATE TABLE backend_metrics (
	backend TEXT    NOT NULL, -- backend name from the configuration
	ts_ns   INTEGER NOT NULL, -- scrape time, Unix ns
	name    TEXT    NOT NULL, -- series name as exposed, e.g. vllm:num_requests_running, vllm:time_to_first_token_seconds_bucket
	labels  TEXT    NOT NULL, -- JSON object of the series' labels, keys sorted, e.g. {"le":"0.1","model_name":"m"}
	value   REAL    NOT NULL
);
CREATE INDEX backend_metrics_series ON backend_metrics(backend, name, ts_ns);
`,
}

// SchemaVersion is the schema version this build writes and reads.
const SchemaVersion = 3

func init() {
	if len(migrations) != SchemaVersion {
		panic("recorder: SchemaVersion does not match the migrations list")
	}
}

// Errors a caller may want to tell apart with errors.Is.
var (
	// ErrNotDatabase means the file exists but is not an abproxy database.
	ErrNotDatabase = errors.New("not an abproxy database")
	// ErrSchemaVersion means the file's schema version is one this build cannot use.
	ErrSchemaVersion = errors.New("unsupported schema version")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("recorder closed")
)

// fileError is a one-sentence error for users that still matches a
// sentinel with errors.Is.
type fileError struct {
	msg  string
	kind error
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.kind }

func notDatabase(path, why string) error {
	return &fileError{fmt.Sprintf("%s: not an abproxy database (%s)", path, why), ErrNotDatabase}
}

// busyTimeout is how long a connection waits for another process's lock
// (e.g. `report` reading while `serve` writes) before failing.
const busyTimeout = 5 * time.Second

// dsn builds a SQLite URI for path. The "file:" form is needed for
// mode=ro; characters that URIs give a meaning are escaped so any path
// works.
func dsn(path string, params ...string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return "file:" + r.Replace(path) + "?" + strings.Join(params, "&")
}

// connector opens go-sqlite3 connections with our DSN without registering
// a global driver name; hook runs per connection so settings survive a
// reconnect by database/sql.
type connector struct {
	dsn string
	drv *sqlite3.SQLiteDriver
}

func (c connector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c connector) Driver() driver.Driver                        { return c.drv }

func openDB(dsn string, hook func(*sqlite3.SQLiteConn) error) *sql.DB {
	return sql.OpenDB(connector{dsn: dsn, drv: &sqlite3.SQLiteDriver{ConnectHook: hook}})
}

// openError turns SQLite's view of a foreign file into one clear sentence.
func openError(path string, err error) error {
	var se sqlite3.Error
	if errors.As(err, &se) && (se.Code == sqlite3.ErrNotADB || se.Code == sqlite3.ErrCorrupt) {
		return notDatabase(path, "file is not a SQLite database")
	}
	return fmt.Errorf("open %s: %w", path, err)
}

// readVersion returns the file's schema version: 0 for an empty database,
// or an ErrNotDatabase error when the file holds tables that are not ours.
func readVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, path string) (int, error) {
	var hasVersion, tables int
	err := q.QueryRowContext(ctx, `SELECT
		count(*) FILTER (WHERE name = 'schema_version'),
		count(*)
		FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).Scan(&hasVersion, &tables)
	if err != nil {
		return 0, openError(path, err)
	}
	if hasVersion == 0 {
		if tables > 0 {
			return 0, notDatabase(path, "it has tables but no schema_version")
		}
		return 0, nil
	}
	var v sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT max(version) FROM schema_version`).Scan(&v); err != nil {
		return 0, notDatabase(path, "unreadable schema_version: "+err.Error())
	}
	if !v.Valid || v.Int64 < 1 {
		return 0, notDatabase(path, "empty schema_version")
	}
	return int(v.Int64), nil
}

func tooNew(path string, v int) error {
	return &fileError{fmt.Sprintf("%s: schema version %d is newer than this abproxy supports (%d)", path, v, SchemaVersion), ErrSchemaVersion}
}

// migrate brings the database to SchemaVersion. It runs in one IMMEDIATE
// transaction (the write connection's _txlock) so two processes opening
// the same new file cannot both create the tables: the second waits, then
// sees the new version and has nothing to do.
func migrate(ctx context.Context, db *sql.DB, path string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return openError(path, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	v, err := readVersion(ctx, tx, path)
	if err != nil {
		return err
	}
	if v > SchemaVersion {
		return tooNew(path, v)
	}
	if v == SchemaVersion {
		return nil
	}
	now := time.Now().UnixNano()
	for i := v; i < SchemaVersion; i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("%s: migrate schema to version %d: %w", path, i+1, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version(version, applied_ns) VALUES (?, ?)`, i+1, now); err != nil {
			return fmt.Errorf("%s: record schema version %d: %w", path, i+1, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit schema migration: %w", path, err)
	}
	return nil
}
