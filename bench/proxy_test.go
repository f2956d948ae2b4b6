package bench

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/proxy"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

// startProxy serves an abproxy proxy recording into db.
func startProxy(t testing.TB, db string, backends ...config.Backend) string {
	t.Helper()
	cfg := config.Default()
	cfg.Backends = backends
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	rec, err := recorder.Open(recorder.Options{Path: db, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Options{Config: cfg, Sink: rec, Run: "proxy-default"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln) //nolint:errcheck
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		_ = rec.Close()
	})
	return "http://" + ln.Addr().String()
}

// twoSims starts a baseline and an optimized sim behind a proxy recording
// into db, and returns the proxy's URL.
func twoSims(t testing.TB, db string, truth *testutil.SyncBuffer) string {
	t.Helper()
	mod := func(o *sim.Options) {
		if truth != nil {
			o.Truth = truth
		}
	}
	a, _ := startSim(t, "baseline", 50, mod)
	b, _ := startSim(t, "optimized", 50, mod)
	return startProxy(t, db, config.Backend{Name: "baseline", URL: a}, config.Backend{Name: "optimized", URL: b})
}

// TestTwoArmsThroughProxy: both backends run at once on the same prompt
// sequence; the proxy records every request under bench's runs; bench adds
// its client-side times to the proxy's rows and reports the overhead.
func TestTwoArmsThroughProxy(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	url := twoSims(t, db, nil)
	cfg := baseConfig(url, db)
	cfg.Backends = []string{"baseline", "optimized"}
	cfg.Scenarios = []string{"N(200,50)/(6,2)"}
	cfg.MaxRequests = 24
	cfg.Warmup = 2
	cfg.RunName = "ab"
	sums, rs, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 2 || sums[0].Backend != "baseline" || sums[1].Backend != "optimized" {
		t.Fatalf("summaries %+v", sums)
	}
	for _, s := range sums {
		if s.Stats.Completed != 24 || s.Proxy == nil || s.Proxy.Matched != 24 || s.Proxy.Unmatched != 0 || s.Proxy.TTFTOverhead.N != 24 {
			t.Errorf("%s: %+v proxy %+v", s.Name, s.Stats, s.Proxy)
		}
	}
	// both arms were in flight at the same time
	var aStart, aEnd, bStart, bEnd int64
	for _, r := range rs {
		if r.ProxyID == "" {
			t.Fatalf("request %d has no proxy id", r.Index)
		}
		if r.Backend == "baseline" {
			aStart, aEnd = minNZ(aStart, r.StartNS), max(aEnd, r.EndNS)
		} else {
			bStart, bEnd = minNZ(bStart, r.StartNS), max(bEnd, r.EndNS)
		}
	}
	if aStart > bEnd || bStart > aEnd {
		t.Error("the two arms did not run at the same time")
	}
	d := testutil.OpenDB(t, db)
	for _, s := range sums {
		q := `FROM requests WHERE run_id = (SELECT id FROM runs WHERE name = ?)`
		if n := queryInt(t, d, `SELECT count(*) `+q+` AND backend = ? AND client_start_ns IS NOT NULL AND client_first_token_ns > client_start_ns`, s.Name, s.Backend); n != 24 {
			t.Errorf("%s: %d proxy rows on %s with client times, want 24", s.Name, n, s.Backend)
		}
		if n := queryInt(t, d, `SELECT count(*) `+q, s.Name+"#warmup"); n != 2 {
			t.Errorf("%s: %d warmup rows, want 2", s.Name, n)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM runs WHERE name = ? AND kind = 'bench' AND json_extract(meta, '$.proxy.matched') = 24
			AND json_extract(meta, '$.target.proxy') = 1`, s.Name); n != 1 {
			t.Errorf("%s: runs row lacks the match results", s.Name)
		}
	}
	// the same prompt sequence on both arms
	if n := queryInt(t, d, `SELECT count(*) FROM (
		SELECT prompt_sha256 FROM requests WHERE run_id = (SELECT id FROM runs WHERE name = 'ab/N(200,50)/(6,2)/c4/baseline')
		EXCEPT
		SELECT prompt_sha256 FROM requests WHERE run_id = (SELECT id FROM runs WHERE name = 'ab/N(200,50)/(6,2)/c4/optimized'))`); n != 0 {
		t.Errorf("%d prompts were sent to baseline only", n)
	}
	if n := queryInt(t, d, `SELECT count(DISTINCT prompt_sha256) FROM requests WHERE run_id IN (SELECT id FROM runs WHERE name LIKE 'ab/%' AND name NOT LIKE '%#warmup')`); n != 24 {
		t.Errorf("%d distinct prompts over both arms, want 24", n)
	}
}

func minNZ(a, b int64) int64 {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

func TestProxyChecks(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "p.db")
	var truth testutil.SyncBuffer
	url := twoSims(t, db, &truth)

	cfg := baseConfig(url, db)
	cfg.Backends = []string{"baseline", "nope"}
	_, err := New(context.Background(), cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), `--backend nope is not a backend of the proxy`) || !strings.Contains(err.Error(), "unknown backend") {
		t.Errorf("unknown backend: %v", err)
	}

	defer func(d time.Duration) { dbProbeTimeout = d }(dbProbeTimeout)
	dbProbeTimeout = time.Second
	other := filepath.Join(dir, "other.db")
	rec, err := recorder.Open(recorder.Options{Path: other})
	if err != nil {
		t.Fatal(err)
	}
	rec.Close()
	cfg = baseConfig(url, other)
	cfg.Backends = []string{"optimized"}
	_, err = New(context.Background(), cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "does not record into --db") {
		t.Errorf("wrong database: %v", err)
	}
	cfg.DB = filepath.Join(dir, "missing.db")
	_, err = New(context.Background(), cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "does not exist, but the target is an abproxy proxy") {
		t.Errorf("missing database: %v", err)
	}

	// no load was sent: the sims never saw a completion request
	time.Sleep(300 * time.Millisecond) // the truth writer flushes every 200 ms
	if b := truth.Bytes(); len(b) != 0 {
		t.Errorf("the checks sent load: %s", b)
	}
}
