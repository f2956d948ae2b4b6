package recorder

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func testPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "abproxy.db")
}

func openTest(t *testing.T, opts Options) *Recorder {
	t.Helper()
	if opts.Path == "" {
		opts.Path = testPath(t)
	}
	r, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func closeTest(t *testing.T, r *Recorder) {
	t.Helper()
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// flushTest flushes r, failing the test if that takes over 5 s.
func flushTest(t *testing.T, r *Recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitWritten waits up to 5 s for at least n records written, without
// asking for a flush; what says what the test did, for the failure.
func waitWritten(t *testing.T, r *Recorder, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.Stats().Written < n {
		if time.Now().After(deadline) {
			t.Fatalf("%+v 5s after %s, want at least %d written", r.Stats(), what, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// scanAll reads every request back through the public read side.
func scanAll(t *testing.T, db *sql.DB, q Query) []*Request {
	t.Helper()
	var out []*Request
	err := ScanRequests(context.Background(), db, q, func(r *Request) error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		t.Fatalf("ScanRequests: %v", err)
	}
	return out
}

func openRO(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := OpenReadOnly(path)
	if err != nil {
		t.Fatalf("OpenReadOnly: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func count(t *testing.T, db *sql.DB, query string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// fullRequest has every field set to a distinct non-zero value.
func fullRequest() *Request {
	const s = int64(1_750_000_000_123_456_789)
	return &Request{
		ID: "req-1", Run: "bench-a", Backend: "optimized", Role: RoleShadow, PairID: "pair-9",
		Endpoint: "/v1/chat/completions", Model: "Qwen/Qwen2.5-14B-Instruct", Stream: true,
		Status: 200, Error: "upstream_reset", ErrorDetail: "backend closed the stream after 3 chunks",
		StartNS: s, UpstreamNS: s + 1_000, FirstByteNS: s + 90_000_000, FirstTokenNS: s + 95_000_000, EndNS: s + 400_000_000,
		ChunkNS:      []int64{s + 95_000_000, s + 125_000_000, s + 125_000_001, s + 399_000_000},
		PromptTokens: 1234, CompletionTokens: 4, TokensSource: TokensUsage, FinishReason: "length",
		OutputSHA256: strings.Repeat("ab", 32), PromptSHA256: strings.Repeat("cd", 32),
		BytesIn: 2048, BytesOut: 777,
		Prompt: `[{"role":"user","content":"héllo ✓"}]`, Output: "Hello\x00world",
		ClientStartNS: s - 500, ClientFirstTokenNS: s + 95_100_000, ClientEndNS: s + 400_200_000,
		ShadowsSkipped: 2, Agreement: &Agreement{Identical: false, PrefixChars: 5, PrefixTokens: 1},
	}
}

func TestRoundTripEveryField(t *testing.T) {
	want := fullRequest()
	// guard: a field added to Request must be added here and stored too
	v := reflect.ValueOf(*want)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("fullRequest leaves %s zero; set it so the round trip covers it", v.Type().Field(i).Name)
		}
	}
	r := openTest(t, Options{StoreBodies: true})
	sent := *want
	sent.ChunkNS = append([]int64(nil), want.ChunkNS...)
	if !r.Submit(&sent) {
		t.Fatal("Submit refused")
	}
	path := r.path
	closeTest(t, r)

	got := scanAll(t, openRO(t, path), Query{})
	if len(got) != 1 {
		t.Fatalf("got %d requests, want 1", len(got))
	}
	if !reflect.DeepEqual(got[0], want) {
		t.Fatalf("round trip:\n got %#v\nwant %#v", got[0], want)
	}
}

func TestNullsForUnknowns(t *testing.T) {
	r := openTest(t, Options{})
	req := &Request{ID: "x", Role: RolePrimary, Backend: "b", Endpoint: "/v1/completions", Model: "m",
		StartNS: 1_000_000, EndNS: 3_000_000, PromptTokens: -1, CompletionTokens: -1}
	r.Submit(req)
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	db := r.DB()
	row := db.QueryRow(`SELECT first_token_ns IS NULL, prompt_tokens IS NULL, completion_tokens IS NULL,
		error IS NULL, pair_id IS NULL, status IS NULL, chunk_ns IS NULL, chunks, tokens_source IS NULL
		FROM requests`)
	var ft, pt, ct, e, p, st, cn, src bool
	var chunks int
	if err := row.Scan(&ft, &pt, &ct, &e, &p, &st, &cn, &chunks, &src); err != nil {
		t.Fatal(err)
	}
	if !(ft && pt && ct && e && p && st && cn && src) || chunks != 0 {
		t.Fatalf("want NULLs for unknowns, got first_token %v prompt_tokens %v completion_tokens %v error %v pair_id %v status %v chunk_ns %v tokens_source %v chunks %d",
			ft, pt, ct, e, p, st, cn, src, chunks)
	}
	got := scanAll(t, db, Query{})
	if len(got) != 1 || got[0].PromptTokens != -1 || got[0].CompletionTokens != -1 || got[0].FirstTokenNS != 0 || got[0].ChunkNS != nil {
		t.Fatalf("read back %+v", got[0])
	}
	if got[0].Run != DefaultRun {
		t.Fatalf("empty run filed under %q, want %q", got[0].Run, DefaultRun)
	}
}

func TestTimingsView(t *testing.T) {
	r := openTest(t, Options{})
	r.Submit(&Request{ID: "a", Role: RolePrimary, StartNS: 1e9, FirstTokenNS: 1e9 + 200e6, EndNS: 1e9 + 1200e6,
		CompletionTokens: 11, PromptTokens: 5})
	r.Submit(&Request{ID: "b", Role: RolePrimary, StartNS: 1e9, EndNS: 2e9, PromptTokens: -1, CompletionTokens: -1, Error: "timeout"})
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var ttft, e2e, tpot float64
	if err := r.DB().QueryRow(`SELECT ttft_ms, e2e_ms, tpot_ms FROM request_timings WHERE id = 'a'`).Scan(&ttft, &e2e, &tpot); err != nil {
		t.Fatal(err)
	}
	if ttft != 200 || e2e != 1200 || tpot != 100 {
		t.Fatalf("ttft %v e2e %v tpot %v, want 200 1200 100", ttft, e2e, tpot)
	}
	var nttft, ntpot sql.NullFloat64
	if err := r.DB().QueryRow(`SELECT ttft_ms, tpot_ms FROM request_timings WHERE id = 'b'`).Scan(&nttft, &ntpot); err != nil {
		t.Fatal(err)
	}
	if nttft.Valid || ntpot.Valid {
		t.Fatalf("failed request without tokens must have NULL ttft/tpot, got %v %v", nttft, ntpot)
	}
}

func TestConcurrentSubmitAllWritten(t *testing.T) {
	const goroutines, each = 32, 250
	r := openTest(t, Options{BatchSize: 100, FlushInterval: 5 * time.Millisecond})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				req := &Request{ID: fmt.Sprintf("g%d-%d", g, i), Run: fmt.Sprintf("run-%d", g%3), Role: RolePrimary,
					StartNS: int64(1e18) + int64(i), ChunkNS: []int64{int64(1e18) + int64(i) + 5}, PromptTokens: i, CompletionTokens: -1}
				if !r.Submit(req) {
					t.Errorf("Submit %s refused", req.ID)
				}
			}
		})
	}
	wg.Wait()
	path := r.path
	closeTest(t, r)
	const n = goroutines * each
	s := r.Stats()
	if s.Submitted != n || s.Written != n || s.Dropped != 0 || s.Failed != 0 || s.QueueDepth != 0 {
		t.Fatalf("stats %+v, want %d submitted and written", s, n)
	}
	db := openRO(t, path)
	if got := count(t, db, `SELECT count(DISTINCT id) FROM requests`); got != n {
		t.Fatalf("%d distinct rows, want %d", got, n)
	}
	if got := count(t, db, `SELECT count(*) FROM runs WHERE kind = 'live'`); got != 3 {
		t.Fatalf("%d live runs created, want 3", got)
	}
}

func TestSubmitRacingClose(t *testing.T) {
	// every Submit that returned true must be on disk after Close, even
	// when Close happens in the middle of a burst
	r := openTest(t, Options{QueueSize: 512, BatchSize: 64})
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		ok, refuse int64
	)
	start := make(chan struct{})
	for g := range 16 {
		wg.Go(func() {
			<-start
			var a, b int64
			for i := range 400 {
				if r.Submit(&Request{ID: fmt.Sprintf("%d-%d", g, i), Role: RolePrimary}) {
					a++
				} else {
					b++
				}
			}
			mu.Lock()
			ok, refuse = ok+a, refuse+b
			mu.Unlock()
		})
	}
	close(start)
	time.Sleep(time.Millisecond)
	closeTest(t, r)
	wg.Wait()
	s := r.Stats()
	if s.Submitted != ok || s.Dropped != refuse || s.Written != ok {
		t.Fatalf("stats %+v; Submit returned true %d times, false %d times", s, ok, refuse)
	}
	if got := count(t, openRO(t, r.path), `SELECT count(*) FROM requests`); got != ok {
		t.Fatalf("%d rows, want %d", got, ok)
	}
	if r.Submit(&Request{ID: "late"}) {
		t.Fatal("Submit after Close returned true")
	}
}

func TestQueueFullDropsCountedExactly(t *testing.T) {
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	core, logs := observer.New(zap.WarnLevel)
	r := openTest(t, Options{QueueSize: 4, hold: hold, Logger: zap.New(core)})
	t.Cleanup(release) // runs before openTest's Close, so a failed check cannot hang Close
	accepted := 0
	for i := range 10 {
		if r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary}) {
			accepted++
		}
	}
	s := r.Stats()
	if accepted != 4 || s.Submitted != 4 || s.Dropped != 6 || s.QueueDepth != 4 || s.QueueCapacity != 4 {
		t.Fatalf("accepted %d, stats %+v; want 4 accepted, 6 dropped, depth 4", accepted, s)
	}
	// six drops in well under a second: exactly one log line
	if n := logs.FilterMessage("recorder queue full, dropping records").Len(); n != 1 {
		t.Fatalf("%d drop log lines, want 1 (rate-limited)", n)
	}
	release()
	closeTest(t, r)
	if s := r.Stats(); s.Written != 4 || s.Dropped != 6 {
		t.Fatalf("after Close: %+v", s)
	}
	if got := count(t, openRO(t, r.path), `SELECT count(*) FROM requests`); got != 4 {
		t.Fatalf("%d rows, want 4", got)
	}
}

func TestFlushIntervalBoundsLatency(t *testing.T) {
	r := openTest(t, Options{FlushInterval: 20 * time.Millisecond})
	r.Submit(&Request{ID: "one", Role: RolePrimary})
	deadline := time.Now().Add(2 * time.Second)
	for count(t, r.DB(), `SELECT count(*) FROM requests`) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("record not on disk 2s after Submit with a 20ms flush interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWriterSleepsThroughABatch(t *testing.T) {
	// Only the first record of a batch may wake the writer: the ones after
	// it are queued while it sleeps on its timer, so Submit costs the data
	// plane no goroutine wake-up.
	r := openTest(t, Options{FlushInterval: time.Hour})
	for i := range 50 {
		r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary})
		time.Sleep(200 * time.Microsecond) // time for a woken writer to run and park again
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.wakes.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // room for wake-ups that should not happen
	if w := r.wakes.Load(); w != 1 {
		t.Fatalf("the writer woke %d times for 50 records, want once", w)
	}
	if got := count(t, r.DB(), `SELECT count(*) FROM requests`); got != 0 {
		t.Fatalf("%d rows before the flush interval, want 0", got)
	}
	flushTest(t, r)
	if got := count(t, r.DB(), `SELECT count(*) FROM requests`); got != 50 {
		t.Fatalf("%d rows after Flush, want 50", got)
	}
}

func TestFullBatchWakesTheWriter(t *testing.T) {
	// with an hour-long interval, only a full batch can get records written
	r := openTest(t, Options{BatchSize: 8, FlushInterval: time.Hour})
	for i := range 20 {
		r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary})
	}
	waitWritten(t, r, 16, "20 records with batch size 8")
}

func TestHalfFullQueueWakesTheWriter(t *testing.T) {
	// A queue smaller than a batch must not fill while the writer sleeps
	// on its timer: half of it queued wakes the writer.
	r := openTest(t, Options{QueueSize: 8, FlushInterval: time.Hour})
	for i := range 40 {
		if !r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary}) {
			t.Fatalf("record %d dropped: %+v", i, r.Stats())
		}
		// the writer, once woken, empties the queue well within this
		deadline := time.Now().Add(5 * time.Second)
		for len(r.queue) >= 4 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
	}
	// at most the held first record of a batch and 3 queued wait for the hour
	waitWritten(t, r, 36, "40 records with an hour-long interval")
}

func TestFlush(t *testing.T) {
	// with an hour-long interval only Flush can make the record visible
	r := openTest(t, Options{FlushInterval: time.Hour})
	for i := range 10 {
		r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary})
	}
	flushTest(t, r)
	if got := count(t, r.DB(), `SELECT count(*) FROM requests`); got != 10 {
		t.Fatalf("%d rows after Flush, want 10", got)
	}
}

func TestStoreBodies(t *testing.T) {
	for _, store := range []bool{false, true} {
		t.Run(fmt.Sprint("store=", store), func(t *testing.T) {
			r := openTest(t, Options{StoreBodies: store})
			req := fullRequest()
			r.Submit(req)
			path := r.path
			closeTest(t, r)
			db := openRO(t, path)
			wantBodies := int64(0)
			if store {
				wantBodies = 1
			}
			if got := count(t, db, `SELECT count(*) FROM bodies`); got != wantBodies {
				t.Fatalf("%d bodies rows, want %d", got, wantBodies)
			}
			got := scanAll(t, db, Query{})[0]
			if got.OutputSHA256 != req.OutputSHA256 || got.PromptSHA256 != req.PromptSHA256 {
				t.Fatal("hashes must be kept whether or not bodies are stored")
			}
			if !store && (got.Prompt != "" || got.Output != "") {
				t.Fatalf("bodies read back with store_bodies off: %q %q", got.Prompt, got.Output)
			}
			if store && (got.Prompt != req.Prompt || got.Output != req.Output) {
				t.Fatalf("bodies: got %q %q", got.Prompt, got.Output)
			}
		})
	}
}

func TestRuns(t *testing.T) {
	r := openTest(t, Options{})
	bench := Run{Name: "sweep-c8", Kind: KindBench, Backend: "baseline", Scenario: "D(100,100)",
		Concurrency: 8, RequestRate: 2.5, StartedNS: 1_000, Meta: json.RawMessage(`{"args":["bench","-c","8"]}`)}
	id, err := r.EnsureRun(bench)
	if err != nil {
		t.Fatal(err)
	}
	again, err := r.EnsureRun(Run{Name: "sweep-c8", Kind: KindBench, Backend: "other"})
	if err != nil || again != id {
		t.Fatalf("second EnsureRun = %d, %v; want %d", again, err, id)
	}
	if _, err := r.EnsureRun(Run{Name: "bad", Kind: "weird"}); err == nil {
		t.Fatal("unknown kind accepted")
	}
	if _, err := r.EnsureRun(Run{Name: "badmeta", Kind: KindBench, Meta: json.RawMessage(`{`)}); err == nil {
		t.Fatal("invalid meta JSON accepted")
	}
	r.Submit(&Request{ID: "1", Run: "sweep-c8", Role: RolePrimary})
	r.Submit(&Request{ID: "2", Run: "prod", Role: RolePrimary, StartNS: 42})
	if err := r.EndRun("sweep-c8", 9_000); err != nil {
		t.Fatal(err)
	}
	if err := r.EndRun("nope", 1); err == nil {
		t.Fatal("EndRun of an unknown run succeeded")
	}
	path := r.path
	closeTest(t, r)
	if _, err := r.EnsureRun(bench); !errors.Is(err, ErrClosed) {
		t.Fatalf("EnsureRun after Close: %v", err)
	}

	db := openRO(t, path)
	runs, err := ListRuns(db)
	if err != nil {
		t.Fatal(err)
	}
	bench.ID, bench.EndedNS = id, 9_000
	want := []Run{bench, {ID: id + 1, Name: "prod", Kind: KindLive, StartedNS: 42}}
	if !reflect.DeepEqual(runs, want) {
		t.Fatalf("runs:\n got %+v\nwant %+v", runs, want)
	}
	reqs := scanAll(t, db, Query{Where: "run_id = (SELECT id FROM runs WHERE name = ?)", Args: []any{"prod"}})
	if len(reqs) != 1 || reqs[0].ID != "2" || reqs[0].Run != "prod" {
		t.Fatalf("filtered scan: %+v", reqs)
	}
}

func TestScanStopsOnCallbackError(t *testing.T) {
	r := openTest(t, Options{})
	for i := range 5 {
		r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary})
	}
	r.Flush(context.Background())
	stop := errors.New("stop")
	n := 0
	err := ScanRequests(context.Background(), r.DB(), Query{}, func(*Request) error {
		n++
		return stop
	})
	if err != stop || n != 1 {
		t.Fatalf("err %v after %d calls; want the callback's error after 1", err, n)
	}
}

func TestMigrateEmptyFileAndReopen(t *testing.T) {
	path := testPath(t)
	if err := os.WriteFile(path, nil, 0o644); err != nil { // 0-byte file, e.g. from touch
		t.Fatal(err)
	}
	r := openTest(t, Options{Path: path})
	r.Submit(&Request{ID: "kept", Role: RolePrimary})
	closeTest(t, r)
	for range 2 {
		r := openTest(t, Options{Path: path})
		closeTest(t, r)
	}
	db := openRO(t, path)
	if got := count(t, db, `SELECT count(*) FROM schema_version`); got != SchemaVersion {
		t.Fatalf("%d schema_version rows after reopening, want %d", got, SchemaVersion)
	}
	if got := count(t, db, `SELECT max(version) FROM schema_version`); got != SchemaVersion {
		t.Fatalf("version %d, want %d", got, SchemaVersion)
	}
	if got := count(t, db, `SELECT count(*) FROM requests WHERE id = 'kept'`); got != 1 {
		t.Fatal("data lost across reopen")
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q, %v; want wal", mode, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := testPath(t)
	closeTest(t, openTest(t, Options{Path: path}))
	raw, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`INSERT INTO schema_version VALUES (7, 0)`); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	want := fmt.Sprintf("%s: schema version 7 is newer than this abproxy supports (%d)", path, SchemaVersion)
	_, err = Open(Options{Path: path})
	if err == nil || err.Error() != want || !errors.Is(err, ErrSchemaVersion) {
		t.Fatalf("Open: %v\nwant: %s", err, want)
	}
	_, err = OpenReadOnly(path)
	if err == nil || err.Error() != want || !errors.Is(err, ErrSchemaVersion) {
		t.Fatalf("OpenReadOnly: %v\nwant: %s", err, want)
	}
}

func TestForeignFilesRefused(t *testing.T) {
	dir := t.TempDir()
	foreign := filepath.Join(dir, "other.db")
	raw, err := sql.Open("sqlite3", foreign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`CREATE TABLE customers(id INTEGER, name TEXT)`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte(strings.Repeat("not a database\n", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{foreign, text, empty} {
		_, err := OpenReadOnly(p)
		if !errors.Is(err, ErrNotDatabase) || !strings.HasPrefix(err.Error(), p+": not an abproxy database") {
			t.Errorf("OpenReadOnly(%s): %v", filepath.Base(p), err)
		}
	}
	for _, p := range []string{foreign, text} {
		if _, err := Open(Options{Path: p}); !errors.Is(err, ErrNotDatabase) {
			t.Errorf("Open(%s): %v", filepath.Base(p), err)
		}
	}
	// refusing must not have touched the foreign database
	raw, _ = sql.Open("sqlite3", foreign)
	defer raw.Close()
	if got := count(t, raw, `SELECT count(*) FROM sqlite_schema WHERE name = 'requests'`); got != 0 {
		t.Fatal("Open created tables in a foreign database")
	}
	var mode string
	if err := raw.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "delete" {
		t.Fatalf("foreign database journal_mode %q, %v; Open must not switch it to WAL", mode, err)
	}

	missing := filepath.Join(dir, "missing.db")
	if _, err := OpenReadOnly(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly(missing): %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("OpenReadOnly created the missing file")
	}
}

func TestReadWhileWriting(t *testing.T) {
	// report reads a file serve is still writing (WAL)
	r := openTest(t, Options{})
	r.Submit(&Request{ID: "a", Role: RolePrimary})
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	db := openRO(t, r.path)
	if got := count(t, db, `SELECT count(*) FROM requests`); got != 1 {
		t.Fatalf("%d rows visible to a reader, want 1", got)
	}
	if _, err := db.Exec(`DELETE FROM requests`); err == nil {
		t.Fatal("read-only handle accepted a write")
	}
}

func TestWriteErrorsCountedNotFatal(t *testing.T) {
	// a batch that cannot be written is logged and counted, and the writer
	// keeps going; simulate it by dropping the table behind its back
	core, logs := observer.New(zap.ErrorLevel)
	r := openTest(t, Options{Logger: zap.New(core)})
	raw, err := sql.Open("sqlite3", r.path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Exec(`DROP VIEW request_timings; DROP TABLE requests`); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		r.Submit(&Request{ID: fmt.Sprint(i), Role: RolePrimary})
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.Failed != 3 || s.Written != 0 {
		t.Fatalf("stats %+v, want 3 failed", s)
	}
	if logs.FilterMessage("recorder write failed").Len() == 0 {
		t.Fatal("write failure not logged")
	}
	if !r.Submit(&Request{ID: "after", Role: RolePrimary}) {
		t.Fatal("recorder stopped accepting after a write error")
	}
}

func TestWriterPragmas(t *testing.T) {
	r := openTest(t, Options{})
	r.wmu.Lock() // the write connection is the writer's; borrow it while idle
	defer r.wmu.Unlock()
	for pragma, want := range map[string]string{
		"journal_mode": "wal", "synchronous": "1", "busy_timeout": "5000", "journal_size_limit": "67108864",
	} {
		var got string
		if err := r.wdb.QueryRow("PRAGMA " + pragma).Scan(&got); err != nil || got != want {
			t.Errorf("PRAGMA %s = %q, %v; want %q", pragma, got, err, want)
		}
	}
}

// TestUpgradeFromVersion1 opens a file written by the first schema and
// checks that it is upgraded in place with its rows kept.
func TestUpgradeFromVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO schema_version VALUES (1, 1);
		INSERT INTO runs(id, name, kind) VALUES (1, 'old', 'live');
		INSERT INTO requests(id, run_id, role, stream, chunks, bytes_in, bytes_out) VALUES ('r1', 1, 'primary', 1, 0, 10, 20)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	r, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	closeTest(t, r)
	ro := openRO(t, path)
	if v := count(t, ro, `SELECT max(version) FROM schema_version`); v != SchemaVersion {
		t.Fatalf("version %d after upgrade, want %d", v, SchemaVersion)
	}
	if n := count(t, ro, `SELECT count(*) FROM requests WHERE id = 'r1' AND output_identical IS NULL AND shadows_skipped IS NULL`); n != 1 {
		t.Fatalf("old row not kept with NULL new columns")
	}
}
