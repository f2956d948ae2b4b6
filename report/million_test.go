package report

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/abproxy/abproxy/recorder"
)

// bigDB writes a database of n requests straight with SQL in one
// transaction (the recorder's batched writer would take minutes): 40 bench
// runs (2 backends × 2 scenarios × 10 concurrencies), streamed responses
// of 32–159 chunks each (one per token, as vLLM streams), 2% failures.
func bigDB(tb testing.TB, dir string, n int) string {
	tb.Helper()
	path := filepath.Join(dir, "big.db")
	rec, err := recorder.Open(recorder.Options{Path: path})
	if err != nil {
		tb.Fatal(err)
	}
	if err := rec.Close(); err != nil {
		tb.Fatal(err)
	}
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_synchronous=OFF")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		tb.Fatal(err)
	}
	type run struct {
		id      int64
		backend string
		speed   float64
	}
	var runs []run
	id := int64(0)
	for _, sc := range []string{"D(100,100)", "D(2000,200)"} {
		for _, c := range []int{1, 2, 4, 8, 16, 32, 64, 128, 256, 512} {
			for bi, b := range []string{"baseline", "optimized"} {
				id++
				meta := fmt.Sprintf(`{"command":"bench","args":["bench","--num-concurrency","%d"],"status":"complete"}`, c)
				if _, err := tx.Exec(`INSERT INTO runs(id, name, kind, backend, scenario, concurrency, started_ns, ended_ns, meta) VALUES (?,?,?,?,?,?,?,?,?)`,
					id, fmt.Sprintf("big/%s/c%d/%s", sc, c, b), "bench", b, sc, c, t0, t0+int64(time.Hour), meta); err != nil {
					tb.Fatal(err)
				}
				runs = append(runs, run{id, b, 1 + 0.5*float64(bi)})
			}
		}
	}
	stmt, err := tx.Prepare(`INSERT INTO requests(id, run_id, backend, role, endpoint, model, stream, status, error,
		start_ns, upstream_ns, first_byte_ns, first_token_ns, end_ns, prompt_tokens, completion_tokens, tokens_source,
		chunks, chunk_ns, finish_reason, output_sha256, bytes_in, bytes_out)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
	if err != nil {
		tb.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	per := n / len(runs)
	chunks := make([]int64, 0, 256)
	var blob []byte
	for i := range n {
		ru := runs[min(i/per, len(runs)-1)]
		start := t0 + int64(i)*int64(time.Millisecond)
		if r.IntN(50) == 0 {
			if _, err := stmt.Exec(fmt.Sprintf("q%08d", i), ru.id, ru.backend, "primary", "/v1/chat/completions", "m", 1, 503, "upstream_status",
				start, start, start, nil, start+int64(5*time.Millisecond), nil, nil, nil, 0, nil, nil, nil, 300, 120); err != nil {
				tb.Fatal(err)
			}
			continue
		}
		tokens := 32 + r.IntN(128)
		ttft := int64((50 + r.ExpFloat64()*100) / ru.speed * 1e6)
		chunks = chunks[:0]
		t := start + ttft
		for range tokens {
			chunks = append(chunks, t)
			t += int64((15 + r.ExpFloat64()*10) / ru.speed * 1e6)
		}
		end := chunks[len(chunks)-1] + int64(time.Millisecond)
		blob = recorder.AppendChunks(blob[:0], start, chunks)
		if _, err := stmt.Exec(fmt.Sprintf("q%08d", i), ru.id, ru.backend, "primary", "/v1/chat/completions", "m", 1, 200, nil,
			start, start+10000, start+ttft-100000, start+ttft, end, 100+r.IntN(1900), tokens, "usage",
			len(chunks), blob, "length", "0123456789abcdef", 300, 40*tokens); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
	return path
}

// measureBuild builds the report of path and returns the wall time and
// the peak Go heap in use while it ran.
func measureBuild(tb testing.TB, path string) (time.Duration, uint64, *Report) {
	d, peak, _, rep := measureBuildCPU(tb, path)
	return d, peak, rep
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureBuildCPU is measureBuild that also returns the CPU time used (on
// a shared machine, wall time depends on the neighbours).
func measureBuildCPU(tb testing.TB, path string) (time.Duration, uint64, time.Duration, *Report) {
	tb.Helper()
	db, err := recorder.OpenReadOnly(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start, cpu0 := time.Now(), cpuTime()
	rep, err := Build(context.Background(), db, Options{Database: "big.db", SLO: SLO{TTFTms: 200, TPOTms: 30}})
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	close(stop)
	wg.Wait()
	if err != nil {
		tb.Fatal(err)
	}
	return elapsed, peak.Load(), cpu, rep
}

// TestMillionRows: a report over 1,000,000 requests takes under 10 s and
// bounded memory. Skipped with -short (building the database takes a
// while); `make bench` runs BenchmarkBuild1M.
func TestMillionRows(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the 1,000,000-request report in -short mode")
	}
	const n = 1_000_000
	t0w := time.Now()
	path := bigDB(t, t.TempDir(), n)
	t.Logf("built a database of %d requests in %s", n, time.Since(t0w).Round(time.Millisecond))
	elapsed, peak, cpu, rep := measureBuildCPU(t, path)
	itl := 0
	for _, s := range rep.Runs {
		itl += s.ITL.Count
	}
	t.Logf("report over %d requests (%d ITL samples): %s wall, %s CPU, peak Go heap in use %.1f MiB",
		n, itl, elapsed.Round(time.Millisecond), cpu.Round(time.Millisecond), float64(peak)/(1<<20))
	if rep.Counts.Counted != n {
		t.Errorf("counted %d requests, want %d", rep.Counts.Counted, n)
	}
	if elapsed > 10*time.Second {
		t.Errorf("report took %s, want under 10 s", elapsed)
	}
	if peak > 512<<20 {
		t.Errorf("peak heap %.0f MiB, want under 512 MiB", float64(peak)/(1<<20))
	}
}

// BenchmarkBuild1M measures Build over 1,000,000 requests (the database
// is built first, outside the timed loop).
func BenchmarkBuild1M(b *testing.B) {
	path := bigDB(b, b.TempDir(), 1_000_000)
	for b.Loop() {
		_, peak, _ := measureBuild(b, path)
		b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	}
}
