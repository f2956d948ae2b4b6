package bench

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

// TestExactPromptTokensEndToEnd is the acceptance test: bench plans
// N prompt tokens, the sim counting like vLLM (chat template + Qwen2.5
// tokenizer) reports N, for every scenario kind, including inputs below
// the template's minimum.
func TestExactPromptTokensEndToEnd(t *testing.T) {
	tok, dir := qwen(t)
	url, _ := startSim(t, "optimized", 50, func(o *sim.Options) { o.CountPrompt = tok.CountPrompt })
	db := filepath.Join(t.TempDir(), "e.db")
	cfg := baseConfig(url, db)
	cfg.Tokenizer = dir
	cfg.Dataset = sonnet(t)
	cfg.Scenarios = []string{"D(100,4)", "N(300,150)/(4,2)", "U(1,400)/(2,6)", "dataset"}
	cfg.MaxRequests = 24
	if testing.Short() {
		cfg.MaxRequests = 12
	}
	cfg.Seed = 11
	cfg.AdditionalParams = `{"max_tokens":4}` // keep dataset answers short too
	sums, rs, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	raised := 0
	for _, r := range rs {
		if !r.OK() {
			t.Fatalf("request failed: %s", r.ErrorDetail)
		}
		if r.PromptTokens != r.PlannedPrompt || !r.Exact {
			t.Errorf("request %d: server counted %d prompt tokens, bench planned %d (exact %v)", r.Index, r.PromptTokens, r.PlannedPrompt, r.Exact)
		}
		if r.Raised {
			raised++
			if r.PlannedPrompt != 30 {
				t.Errorf("a raised input was planned at %d, want the minimum 30", r.PlannedPrompt)
			}
		}
	}
	if len(rs) != 4*cfg.MaxRequests {
		t.Errorf("%d results, want %d", len(rs), 4*cfg.MaxRequests)
	}
	for _, s := range sums {
		if s.Stats.PromptMismatch != 0 || s.Stats.Completed != cfg.MaxRequests {
			t.Errorf("%s: %+v", s.Name, s.Stats)
		}
	}
	d := testutil.OpenDB(t, db)
	if n := queryInt(t, d, `SELECT sum(prompt_tokens) FROM requests WHERE run_id = (SELECT id FROM runs WHERE scenario = 'D(100,4)')`); n != int64(100*cfg.MaxRequests) {
		t.Errorf("D(100,4): the server reported %d prompt tokens over %d requests, want %d", n, cfg.MaxRequests, 100*cfg.MaxRequests)
	}
	if n := queryInt(t, d, `SELECT min(prompt_tokens) FROM requests`); n < 30 {
		t.Errorf("a prompt of %d tokens; the chat template alone is 29", n)
	}
	t.Logf("%d of %d U(1,400) inputs were below the template's minimum and raised to 30", raised, cfg.MaxRequests)
}

// Without a tokenizer bench estimates like the sim does without one, so
// the two agree, and the run metadata flags the counts as approximate.
func TestApproximateCounts(t *testing.T) {
	url, _ := startSim(t, "optimized", 50, nil)
	db := filepath.Join(t.TempDir(), "a.db")
	cfg := baseConfig(url, db)
	cfg.Scenarios = []string{"N(200,100)/(4,1)"}
	sums, rs, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Exact || r.PromptTokens != r.PlannedPrompt {
			t.Errorf("request %d: exact %v, server estimate %d, bench estimate %d", r.Index, r.Exact, r.PromptTokens, r.PlannedPrompt)
		}
	}
	d := testutil.OpenDB(t, db)
	if n := queryInt(t, d, `SELECT json_extract(meta, '$.approximate_counts') FROM runs WHERE name = ?`, sums[0].Name); n != 1 {
		t.Error("runs.meta does not flag approximate counts")
	}
}

func TestRunsRowsAndMetadata(t *testing.T) {
	tok, dir := qwen(t)
	url, _ := startSim(t, "optimized", 50, func(o *sim.Options) { o.CountPrompt = tok.CountPrompt })
	db := filepath.Join(t.TempDir(), "m.db")
	cfg := baseConfig(url, db)
	cfg.Tokenizer = dir
	cfg.Dataset = sonnet(t)
	cfg.Scenarios = []string{"D(60,8)", "U(100,200)"}
	cfg.Concurrency = []int{1, 3}
	cfg.MaxRequests = 6
	cfg.Seed = 99
	cfg.RunName = "study"
	sums, _, err := runWith(t, context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 4 {
		t.Fatalf("%d runs, want 2 scenarios × 2 concurrencies", len(sums))
	}
	d := testutil.OpenDB(t, db)
	runs, err := recorder.ListRuns(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 4 {
		t.Fatalf("%d runs rows", len(runs))
	}
	backend := strings.TrimPrefix(url, "http://")
	wantNames := []string{"study/D(60,8)/c1/" + backend, "study/D(60,8)/c3/" + backend, "study/U(100,200)/c1/" + backend, "study/U(100,200)/c3/" + backend}
	for i, r := range runs {
		if r.Name != wantNames[i] || r.Kind != recorder.KindBench || r.Backend != backend || r.Scenario != cfg.Scenarios[i/2] ||
			r.Concurrency != cfg.Concurrency[i%2] || r.StartedNS == 0 || r.EndedNS <= r.StartedNS {
			t.Errorf("run %d: %+v", i, r)
		}
		var m struct {
			Command string `json:"command"`
			Version string `json:"version"`
			Args    []string
			Flags   map[string]any
			Status  string
			Seed    int64
			Approx  bool `json:"approximate_counts"`
			Tok     struct {
				Dir    string
				SHA256 map[string]string
			} `json:"tokenizer"`
			Dataset struct {
				Path      string
				SHA256    string
				Lines     int
				Generated bool
			}
			Target struct {
				URL           string
				Proxy         bool
				ServerVersion string `json:"server_version"`
			}
			Results Stats
			CPU     CPUStats `json:"client_cpu"`
		}
		if err := json.Unmarshal(r.Meta, &m); err != nil {
			t.Fatal(err)
		}
		if m.Command != "bench" || m.Version != "test" || len(m.Args) == 0 || m.Status != "complete" || m.Seed != 99 || m.Approx ||
			m.Tok.Dir != dir || len(m.Tok.SHA256["vocab.json"]) != 64 ||
			m.Dataset.SHA256 != "d1fd4045bd182bf01be064afd35b71dc1d01ccfde01686c13f4b8448570088ef" || m.Dataset.Lines != 84 ||
			m.Target.URL != url || m.Target.Proxy || m.Target.ServerVersion != sim.Version ||
			m.Results.Completed != 6 || m.CPU.Chunks == 0 {
			t.Errorf("run %s meta: %s", r.Name, r.Meta)
		}
		if m.Flags["max_requests_per_run"] != float64(6) || m.Flags["traffic_scenario"] == nil || m.Flags["api_key_set"] != false {
			t.Errorf("flags in meta: %v", m.Flags)
		}
	}
	// without a proxy bench writes complete rows, client-side times included
	if n := queryInt(t, d, `SELECT count(*) FROM requests WHERE start_ns IS NULL OR first_token_ns IS NULL OR end_ns IS NULL
		OR client_start_ns != start_ns OR client_end_ns != end_ns OR chunks != completion_tokens OR chunk_ns IS NULL
		OR prompt_sha256 IS NULL OR output_sha256 IS NULL OR tokens_source != 'usage' OR status != 200`); n != 0 {
		t.Errorf("%d request rows are incomplete", n)
	}
}

func TestSeedReproducible(t *testing.T) {
	url, _ := startSim(t, "optimized", 50, nil)
	db := filepath.Join(t.TempDir(), "s.db")
	prompts := func(name string, seed int64) map[int]string {
		cfg := baseConfig(url, db)
		cfg.RunName, cfg.Seed = name, seed
		cfg.Scenarios = []string{"N(300,100)/(3,1)"}
		_, rs, err := runWith(t, context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		m := map[int]string{}
		for _, r := range rs {
			m[r.Index] = r.PromptSHA256
		}
		return m
	}
	a, b, c := prompts("a", 5), prompts("b", 5), prompts("c", 6)
	distinct := map[string]bool{}
	for i, h := range a {
		if h == "" || b[i] != h {
			t.Fatalf("request %d: prompt %q then %q under the same seed", i, h, b[i])
		}
		if c[i] == h {
			t.Fatalf("request %d has the same prompt under another seed", i)
		}
		distinct[h] = true
	}
	if len(distinct) != len(a) {
		t.Errorf("%d distinct prompts among %d requests", len(distinct), len(a))
	}
}
