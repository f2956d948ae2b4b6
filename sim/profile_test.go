package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBuiltinProfiles(t *testing.T) {
	b, ok := BuiltinProfile("baseline")
	o, ok2 := BuiltinProfile("optimized")
	if !ok || !ok2 {
		t.Fatal("built-in profiles missing")
	}
	for _, p := range []Profile{b, o} {
		if err := p.Validate(); err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
	}
	// The calibration's shape: optimized is faster per token and holds more.
	if !(o.StepBase < b.StepBase && o.KVCapacityTokens > 2*b.KVCapacityTokens && o.PrefillChunkTokens == 4096) {
		t.Fatalf("profiles do not tell the study's story: %+v vs %+v", b, o)
	}
	if _, ok := BuiltinProfile("nope"); ok {
		t.Fatal("unknown profile found")
	}
	if got := strings.Join(BuiltinProfileNames(), ","); got != "baseline,optimized" {
		t.Fatalf("names %s", got)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadProfile(t *testing.T) {
	if p, err := LoadProfile("optimized"); err != nil || p.Name != "optimized" {
		t.Fatalf("builtin by name: %+v %v", p, err)
	}
	p, err := LoadProfile(writeFile(t, "fast.toml", `
base = "baseline"
step_base = "5ms"
kv_capacity_tokens = 60000
jitter = 0.1
`))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := BuiltinProfile("baseline")
	want.Name, want.StepBase, want.KVCapacityTokens, want.Jitter = "fast", 5*time.Millisecond, 60000, 0.1
	if p != want {
		t.Fatalf("loaded %+v\nwant   %+v", p, want)
	}

	full := `name = "mine"
max_num_seqs = 8
kv_capacity_tokens = 1000
max_model_len = 1000
prefill_tokens_per_sec = 2000.5
prefill_chunk_tokens = 256
step_base = "19.5ms"
step_per_seq = 250000
jitter = 0
default_max_tokens = 32
`
	p, err = LoadProfile(writeFile(t, "full.toml", full))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "mine" || p.StepBase != 19500*time.Microsecond || p.StepPerSeq != 250*time.Microsecond || p.PrefillTokensPerSec != 2000.5 {
		t.Fatalf("full profile: %+v", p)
	}
	pj, err := LoadProfile(writeFile(t, "p.json", `{"base":"optimized","step_base":"1ms","max_num_seqs":4}`))
	if err != nil || pj.StepBase != time.Millisecond || pj.MaxNumSeqs != 4 || pj.Name != "p" {
		t.Fatalf("json profile: %+v %v", pj, err)
	}

	for _, c := range []struct{ name, content, want string }{
		{"typo.toml", "base = \"baseline\"\nstep_bas = \"5ms\"\n", `unknown key "step_bas"`},
		{"missing.toml", strings.Replace(full, "jitter = 0\n", "", 1), "key jitter is missing"},
		{"dur.toml", "base = \"baseline\"\nstep_base = \"fast\"\n", `key step_base: must be a duration like "19.5ms", got "fast"`},
		{"type.toml", "base = \"baseline\"\nmax_num_seqs = \"8\"\n", "key max_num_seqs: must be an integer"},
		{"invalid.toml", "base = \"baseline\"\nmax_model_len = 100000\n", "max_model_len (100000) exceeds kv_capacity_tokens (55000)"},
		{"base.toml", "base = \"turbo\"\n", `base "turbo" is not a built-in profile (baseline, optimized)`},
		{"syntax.toml", "base = \n", "parse sim profile"},
	} {
		_, err := LoadProfile(writeFile(t, c.name, c.content))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.name, err, c.want)
		}
	}
	_, err = LoadProfile("turbo")
	if err == nil || err.Error() != `sim profile "turbo" is neither a built-in profile (baseline, optimized) nor a file` {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := LoadProfile("/does/not/exist.toml"); err == nil || !strings.Contains(err.Error(), "read sim profile") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil || !strings.Contains(err.Error(), "Options.Profile is empty") {
		t.Fatalf("empty profile: %v", err)
	}
	p := fastProfile()
	p.StepBase = 0
	if _, err := New(Options{Profile: p}); err == nil || !strings.Contains(err.Error(), "step_base must be positive") {
		t.Fatalf("zero step: %v", err)
	}
	if _, err := New(Options{Profile: fastProfile(), Speedup: -1}); err == nil || !strings.Contains(err.Error(), "speedup") {
		t.Fatalf("negative speedup: %v", err)
	}
}
