package bench

import (
	"context"
	"database/sql"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/abproxy/abproxy/sim"
	"github.com/abproxy/abproxy/tokenizer"
)

// sharedData is ../../shared/data relative to this package's directory.
const sharedData = "../../shared/data"

var (
	tokOnce sync.Once
	tokVal  *tokenizer.Tokenizer
	tokErr  error
)

// qwen loads the Qwen2.5 tokenizer from the shared data, skipping the test
// with a clear message when it is not there.
func qwen(t testing.TB) (*tokenizer.Tokenizer, string) {
	t.Helper()
	dir := filepath.Join(sharedData, "qwen2.5-tokenizer")
	if _, err := os.Stat(filepath.Join(dir, "vocab.json")); err != nil {
		t.Skipf("skipping: %s is absent (the Qwen2.5 tokenizer from the shared data folder is needed for exact prompt sizes)", dir)
	}
	tokOnce.Do(func() { tokVal, tokErr = tokenizer.Load(dir) })
	if tokErr != nil {
		t.Fatal(tokErr)
	}
	return tokVal, dir
}

// sonnet returns the path of genai-bench's sonnet.txt, skipping when absent.
func sonnet(t testing.TB) string {
	t.Helper()
	p := filepath.Join(sharedData, "sonnet.txt")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("skipping: %s is absent (genai-bench's corpus from the shared data folder)", p)
	}
	return p
}

// startSim serves a sim; mod may adjust the options (CountPrompt, Truth).
func startSim(t testing.TB, profile string, speedup float64, mod func(*sim.Options)) (string, *sim.Server) {
	t.Helper()
	prof, ok := sim.BuiltinProfile(profile)
	if !ok {
		t.Fatalf("no profile %s", profile)
	}
	opts := sim.Options{Profile: prof, Seed: 7, Speedup: speedup}
	if mod != nil {
		mod(&opts)
	}
	s, url, err := sim.Start(opts, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return url, s
}

// runBench prepares and runs a benchmark, failing the test on error.
func runBench(t testing.TB, ctx context.Context, cfg Config) []RunSummary {
	t.Helper()
	b, err := New(ctx, cfg, Options{Progress: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sums, err := b.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

func queryInt(t testing.TB, db *sql.DB, q string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n.Int64
}

// baseConfig is a small, fast benchmark configuration.
func baseConfig(target, db string) Config {
	return Config{
		Target:      target,
		DB:          db,
		Scenarios:   []string{"D(60,8)"},
		Concurrency: []int{4},
		MaxRequests: 16,
		RunName:     "t",
		IdleTimeout: 20 * time.Second,
	}
}
