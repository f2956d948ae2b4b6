package main

import (
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
	"github.com/abproxy/abproxy/tokenizer"
)

func runCLI(args ...string) error {
	root := newRoot()
	root.SetArgs(args)
	return root.Execute()
}

func TestBenchCLIBadInput(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--traffic-scenario", "D(100)"}, `traffic scenario "D(100)" is not valid`},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--db", ""}, "cannot reach --target http://127.0.0.1:1"},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--tokenizer", dir}, "--tokenizer " + dir + " has no tokenizer files"},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--max-time-per-run", "soon"}, `--max-time-per-run "soon" is neither minutes`},
		{[]string{"bench", "--target", "http://127.0.0.1:1", "--num-concurrency", "x"}, `invalid argument "x" for "--num-concurrency"`},
		{[]string{"bench"}, "--target is required"},
	}
	for _, c := range cases {
		err := runCLI(c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want one line with %q", c.args, err, c.want)
		}
	}
}

// TestBenchCLIExactCounts runs `abproxy bench` against a sim counting with
// `abproxy sim --tokenizer`'s counter: the planned prompt sizes are the
// ones the server reports.
func TestBenchCLIExactCounts(t *testing.T) {
	tokDir := filepath.Join("..", "..", "..", "shared", "data", "qwen2.5-tokenizer")
	if _, err := os.Stat(filepath.Join(tokDir, "vocab.json")); err != nil {
		t.Skipf("skipping: %s is absent (the Qwen2.5 tokenizer from the shared data folder)", tokDir)
	}
	tok, err := tokenizer.Load(tokDir)
	if err != nil {
		t.Fatal(err)
	}
	prof, _ := sim.BuiltinProfile("optimized")
	s, url, err := sim.Start(sim.Options{Profile: prof, Speedup: 50, CountPrompt: tok.CountPrompt}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	db := filepath.Join(t.TempDir(), "b.db")
	err = runCLI("bench", "--target", url, "--db", db, "--tokenizer", tokDir, "--traffic-scenario", "D(123,3)",
		"--traffic-scenario", "U(40,90)/(2,4)", "--num-concurrency", "2,3", "--max-requests-per-run", "6", "--warmup", "1",
		"--max-time-per-run", "1", "--run-name", "cli", "--seed", "4")
	if err != nil {
		t.Fatal(err)
	}
	d, err := recorder.OpenReadOnly(db)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var n, bad int
	var sum sql.NullInt64
	if err := d.QueryRow(`SELECT count(*), sum(prompt_tokens) FROM requests WHERE run_id IN (SELECT id FROM runs WHERE scenario = 'D(123,3)' AND name NOT LIKE '%#warmup')`).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if n != 12 || sum.Int64 != 12*123 {
		t.Errorf("D(123,3): %d requests with %d prompt tokens, want 12 with %d", n, sum.Int64, 12*123)
	}
	if err := d.QueryRow(`SELECT count(*) FROM runs WHERE kind = 'bench' AND json_extract(meta, '$.status') = 'complete'
		AND json_extract(meta, '$.results.prompt_tokens_mismatch') = 0 AND json_extract(meta, '$.flags.max_time_per_run_s') = 60`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if bad != 4 {
		t.Errorf("%d of 4 runs are complete with exact prompt sizes and the flags in their metadata", bad)
	}
}
