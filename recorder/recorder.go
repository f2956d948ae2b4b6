package recorder

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.uber.org/zap"
)

// Options configure a Recorder. The zero value of every field but Path
// picks a default sized for 1,000 concurrent streams.
type Options struct {
	Path          string        // SQLite file, created if missing
	QueueSize     int           // records that may wait for the writer; default 65536
	BatchSize     int           // max records per transaction; default 2048
	FlushInterval time.Duration // max time a record waits for its batch under light load; default 250ms
	StoreBodies   bool          // keep Prompt/Output in the bodies table; when false only their hashes are kept
	Logger        *zap.Logger   // default: no logging

	// hold, when set by a test, keeps the writer from taking anything off
	// the queue until it is closed, so the queue can be filled exactly.
	hold <-chan struct{}
}

const (
	defaultQueueSize     = 65536
	defaultBatchSize     = 2048
	defaultFlushInterval = 250 * time.Millisecond // config.DefaultFlushInterval says why
)

// Recorder is the write side: a bounded queue drained by one writer
// goroutine that owns the only write connection. Submit is the data plane's
// only contact with it and never waits; everything that can be slow (disk,
// locks held by a reader, errors) happens on the writer goroutine.
type Recorder struct {
	path  string
	opts  Options
	log   *zap.Logger
	queue chan *Request

	// mu orders Submit against Close: Submit sends under RLock, Close
	// closes the queue under Lock, so a send never hits a closed channel
	// and nothing accepted before Close is left behind.
	mu     sync.RWMutex
	closed bool

	wdb *sql.DB // exactly one connection, used only by the writer and, under wmu, EnsureRun/EndRun
	rdb *sql.DB // read-only pool handed out by DB()

	wmu        sync.Mutex       // serializes use of wdb between batches and run calls
	runIDs     map[string]int64 // run name -> runs.id; guarded by wmu
	insertReq  *sql.Stmt
	insertBody *sql.Stmt
	chunkBuf   []byte // reused blob buffer; writer goroutine only
	args       []any  // reused insert arguments; writer goroutine only

	submitted, written, dropped, failed atomic.Int64
	lastDropLog                         atomic.Int64 // Unix ns of the last "queue full" log line
	lastFailLog                         time.Time    // writer goroutine only

	wake     chan struct{} // asks the writer to write what it holds and what is queued, now
	wakes    atomic.Int64  // times the writer woke; tests count them
	wakeAt   int           // queued records that wake the writer early: a batch, or half the queue if less
	pmu      sync.Mutex
	progress chan struct{} // closed and replaced after every batch; guarded by pmu
	done     chan struct{} // closed when the writer goroutine has exited

	closeOnce sync.Once
	closeErr  error
}

// Open opens or creates the database at opts.Path, migrates it to
// SchemaVersion and starts the writer. It refuses a file that is not an
// abproxy database or whose schema is newer than this build.
func Open(opts Options) (*Recorder, error) {
	if opts.Path == "" {
		return nil, errors.New("recorder: no database path")
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = defaultQueueSize
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = defaultBatchSize
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = defaultFlushInterval
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	path := opts.Path
	ms := strconv.Itoa(int(busyTimeout / time.Millisecond))

	// _txlock=immediate takes the write lock at BEGIN, where busy_timeout
	// applies, instead of failing on a read-to-write upgrade. A larger page
	// cache keeps the index pages hot at high insert rates. WAL is switched
	// on only after migrate has checked the file is ours: journal_mode is
	// stored in the file, and a foreign database must be left untouched.
	wdb := openDB(dsn(path, "mode=rwc", "_synchronous=NORMAL",
		"_busy_timeout="+ms, "_txlock=immediate", "_cache_size=-16384"),
		func(c *sqlite3.SQLiteConn) error {
			// keep the WAL file from staying huge after a burst
			_, err := c.Exec("PRAGMA journal_size_limit = 67108864", nil)
			return err
		})
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)

	ctx := context.Background()
	if err := wdb.PingContext(ctx); err != nil {
		wdb.Close()
		return nil, openError(path, err)
	}
	if err := migrate(ctx, wdb, path); err != nil {
		wdb.Close()
		return nil, err
	}
	// WAL lets `report` read while this process writes, and with
	// synchronous=NORMAL a commit costs no fsync.
	var mode string
	if err := wdb.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil || mode != "wal" {
		wdb.Close()
		if err == nil {
			err = fmt.Errorf("journal mode is %q", mode)
		}
		return nil, fmt.Errorf("%s: enable WAL: %w", path, err)
	}
	insertReq, err := wdb.PrepareContext(ctx, insertRequestSQL)
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("%s: prepare insert: %w", path, err)
	}
	insertBody, err := wdb.PrepareContext(ctx, `INSERT INTO bodies(request_id, prompt, output) VALUES (?, ?, ?)`)
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("%s: prepare insert: %w", path, err)
	}

	r := &Recorder{
		path:       path,
		opts:       opts,
		log:        opts.Logger.With(zap.String("db", path)),
		queue:      make(chan *Request, opts.QueueSize),
		wdb:        wdb,
		rdb:        openDB(dsn(path, "mode=ro", "_busy_timeout="+ms), nil),
		runIDs:     make(map[string]int64),
		insertReq:  insertReq,
		insertBody: insertBody,
		args:       make([]any, requestColumns),
		wake:       make(chan struct{}, 1),
		wakeAt:     max(1, min(opts.BatchSize, opts.QueueSize/2)),
		progress:   make(chan struct{}),
		done:       make(chan struct{}),
	}
	go r.run()
	return r, nil
}

// Submit hands one record to the writer. It never blocks and never touches
// the disk: when the queue is full, or after Close, it counts a drop and
// returns false. It is safe for concurrent use. The recorder owns req after
// a true return; the caller must not modify it. A nil req is ignored.
func (r *Recorder) Submit(req *Request) bool {
	if req == nil {
		return false
	}
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		r.dropped.Add(1)
		return false
	}
	select {
	case r.queue <- req:
		r.mu.RUnlock()
		r.submitted.Add(1)
		// Only a full batch, or a half-full queue, wakes the writer early;
		// before that it sleeps on its timer. len of a channel reads its
		// count without a lock.
		if len(r.queue) >= r.wakeAt {
			r.wakeWriter()
		}
		return true
	default:
		r.mu.RUnlock()
		r.drop()
		return false
	}
}

// wakeWriter asks the writer to write now without waiting for a wake-up
// already pending.
func (r *Recorder) wakeWriter() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// drop counts a record refused because the queue is full and logs it at
// most once a second, so an overload does not become a log flood too.
func (r *Recorder) drop() {
	n := r.dropped.Add(1)
	now := time.Now().UnixNano()
	last := r.lastDropLog.Load()
	if now-last >= int64(time.Second) && r.lastDropLog.CompareAndSwap(last, now) {
		r.log.Warn("recorder queue full, dropping records",
			zap.Int64("dropped_total", n), zap.Int("queue_size", r.opts.QueueSize))
	}
}

// Stats returns the counters. Written+Failed catches up with Submitted once
// the queue is drained.
func (r *Recorder) Stats() Stats {
	return Stats{
		Submitted:     r.submitted.Load(),
		Written:       r.written.Load(),
		Dropped:       r.dropped.Load(),
		Failed:        r.failed.Load(),
		QueueDepth:    len(r.queue),
		QueueCapacity: cap(r.queue),
	}
}

// Flush waits until every record accepted before the call has been written
// (or has failed), asking the writer not to wait for FlushInterval. It is
// for `bench` and `demo`, which read their results right after a run; the
// proxy never calls it.
func (r *Recorder) Flush(ctx context.Context) error {
	target := r.submitted.Load()
	for {
		r.pmu.Lock()
		progress := r.progress
		r.pmu.Unlock()
		if r.written.Load()+r.failed.Load() >= target {
			return nil
		}
		r.wakeWriter()
		select {
		case <-progress:
		case <-r.done:
			if r.written.Load()+r.failed.Load() >= target {
				return nil
			}
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops accepting records, writes everything already accepted, and
// closes the database. Calling it again returns the first result.
func (r *Recorder) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		close(r.queue)
		r.mu.Unlock()
		r.wakeWriter() // it may be asleep on its timer, holding records
		<-r.done

		r.wmu.Lock()
		defer r.wmu.Unlock()
		var errs []error
		errs = append(errs, r.insertReq.Close(), r.insertBody.Close(), r.rdb.Close())
		// let SQLite refresh its query planner statistics; cheap, and the
		// report's queries benefit
		if _, err := r.wdb.Exec("PRAGMA optimize"); err != nil {
			errs = append(errs, err)
		}
		// the last connection to close checkpoints the WAL into the file
		errs = append(errs, r.wdb.Close())
		if err := errors.Join(errs...); err != nil {
			r.closeErr = fmt.Errorf("close %s: %w", r.path, err)
		}
		if s := r.Stats(); s.Failed > 0 || s.Dropped > 0 {
			r.log.Warn("recorder closed with lost records",
				zap.Int64("written", s.Written), zap.Int64("failed", s.Failed), zap.Int64("dropped", s.Dropped))
		}
	})
	return r.closeErr
}

// DB returns a read-only connection pool on the same file, for the report
// and tests. Writes go through the Recorder. It is closed by Close.
func (r *Recorder) DB() *sql.DB { return r.rdb }

// EnsureRun returns the id of the run named run.Name, creating it from run
// if it does not exist yet (an existing run is left unchanged). It is
// synchronous and meant for startup, not the hot path. StartedNS 0 means
// now; Kind must be KindBench, KindLive or KindMirror.
func (r *Recorder) EnsureRun(run Run) (int64, error) {
	if run.Name == "" {
		return 0, errors.New("ensure run: empty name")
	}
	switch run.Kind {
	case KindBench, KindLive, KindMirror:
	default:
		return 0, fmt.Errorf("ensure run %q: kind %q is not bench, live or mirror", run.Name, run.Kind)
	}
	if len(run.Meta) > 0 && !json.Valid(run.Meta) {
		return 0, fmt.Errorf("ensure run %q: meta is not valid JSON", run.Name)
	}
	if run.StartedNS == 0 {
		run.StartedNS = time.Now().UnixNano()
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.isClosed() {
		return 0, ErrClosed
	}
	if id, ok := r.runIDs[run.Name]; ok {
		return id, nil
	}
	id, err := ensureRun(context.Background(), r.wdb, run)
	if err != nil {
		return 0, fmt.Errorf("ensure run %q: %w", run.Name, err)
	}
	r.runIDs[run.Name] = id
	return id, nil
}

// EndRun sets ended_ns of the named run; endedNS 0 means now.
func (r *Recorder) EndRun(name string, endedNS int64) error {
	if endedNS == 0 {
		endedNS = time.Now().UnixNano()
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.isClosed() {
		return ErrClosed
	}
	res, err := r.wdb.Exec(`UPDATE runs SET ended_ns = ? WHERE name = ?`, endedNS, name)
	if err != nil {
		return fmt.Errorf("end run %q: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("end run %q: no such run", name)
	}
	return nil
}

func (r *Recorder) isClosed() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.closed
}

type execQuerier interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
	QueryRowContext(context.Context, string, ...any) *sql.Row
}

// ensureRun is create-or-get by name. Selecting first keeps an existing
// run's id and fields; the insert cannot race with another writer of this
// file because the caller holds the write connection (and, across
// processes, SQLite's write lock).
func ensureRun(ctx context.Context, db execQuerier, run Run) (int64, error) {
	var id int64
	err := db.QueryRowContext(ctx, `SELECT id FROM runs WHERE name = ?`, run.Name).Scan(&id)
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, err
	}
	var meta any
	if len(run.Meta) > 0 {
		meta = string(run.Meta)
	}
	res, err := db.ExecContext(ctx, `INSERT INTO runs(name, kind, backend, scenario, concurrency, request_rate, started_ns, ended_ns, meta)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		run.Name, run.Kind, nullString(run.Backend), nullString(run.Scenario),
		nullInt(int64(run.Concurrency)), nullFloat(run.RequestRate),
		nullInt(run.StartedNS), nullInt(run.EndedNS), meta)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}
