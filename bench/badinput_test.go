package bench

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadInput: every mistake is one sentence, before any load is sent.
func TestBadInput(t *testing.T) {
	f := newFakeServer(t, 1, time.Millisecond)
	dir := t.TempDir()
	emptyDir := filepath.Join(dir, "model")
	os.Mkdir(emptyDir, 0o755)
	os.WriteFile(filepath.Join(emptyDir, "config.json"), []byte("{}"), 0o644)
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr
	}()
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"malformed scenario", func(c *Config) { c.Scenarios = []string{"D(100,100)", "N(480,240)"} }, `traffic scenario "N(480,240)" is not valid: N takes two pairs`},
		{"no target", func(c *Config) { c.Target = "" }, "--target is required"},
		{"bad target", func(c *Config) { c.Target = "localhost:8080" }, `--target "localhost:8080" is not an http(s)://host:port URL`},
		{"unreachable target", func(c *Config) { c.Target = closed }, "cannot reach --target " + closed + ": connect: connection refused"},
		{"not an OpenAI server", func(c *Config) { c.Target = f.url + "/nothing" }, "does not serve the OpenAI API: GET /v1/models answered HTTP 404"},
		{"tokenizer without files", func(c *Config) { c.Tokenizer = emptyDir }, "--tokenizer " + emptyDir + " has no tokenizer files: it needs tokenizer.json, or vocab.json and merges.txt"},
		{"tokenizer missing", func(c *Config) { c.Tokenizer = filepath.Join(dir, "nope") }, "no such directory"},
		{"dataset missing", func(c *Config) { c.Dataset = filepath.Join(dir, "nope.txt") }, "dataset " + filepath.Join(dir, "nope.txt") + " does not exist"},
		{"two backends without a proxy", func(c *Config) { c.Backends = []string{"a", "b"} }, "--backend a,b needs --target to be an abproxy proxy"},
		{"same backend twice", func(c *Config) { c.Backends = []string{"a", "a"} }, "names the same backend twice"},
		{"zero concurrency", func(c *Config) { c.Concurrency = []int{4, 0} }, "--num-concurrency must be at least 1"},
		{"concurrency twice", func(c *Config) { c.Concurrency = []int{1, 8, 1} }, "--num-concurrency lists 1 twice"},
		{"scenario twice", func(c *Config) { c.Scenarios = []string{"D(60,8)", "D(9,9)", "D(60,8)"} }, `--traffic-scenario lists "D(60,8)" twice`},
		{"rate twice", func(c *Config) { c.Concurrency = nil; c.RequestRates = []float64{2, 2} }, "--request-rate lists 2 twice"},
		{"rate and concurrency", func(c *Config) { c.RequestRates = []float64{2} }, "exclude each other"},
		{"bad rate", func(c *Config) { c.Concurrency = nil; c.RequestRates = []float64{-1} }, "--request-rate must be a positive number"},
		{"cap without rate", func(c *Config) { c.MaxConcurrency = 4 }, "--max-concurrency caps --request-rate runs"},
		{"never ends", func(c *Config) { c.MaxRequests, c.MaxTime = 0, 0 }, "a run would never end"},
		{"bad params", func(c *Config) { c.AdditionalParams = `{"temperature":` }, "--additional-request-params is not a JSON object"},
		{"unknown model", func(c *Config) { c.Model = "gpt-x" }, `--api-model-name "gpt-x" is not served by ` + f.url + " (it serves fake-model)"},
		{"run exists", func(c *Config) { c.DB = filepath.Join(dir, "x.db"); c.RunName = "dup" }, `run "dup/D(60,8)/c4/`},
	}
	// a run named dup already in x.db
	cfg := baseConfig(f.url, filepath.Join(dir, "x.db"))
	cfg.RunName, cfg.MaxRequests = "dup", 1
	if _, _, err := runWith(t, context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	posts := f.posts.Load()
	for _, c := range cases {
		cfg := baseConfig(f.url, "")
		c.mod(&cfg)
		_, err := New(context.Background(), cfg, Options{})
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q, want one line containing %q", c.name, msg, c.want)
		}
	}
	if n := f.posts.Load() - posts; n != 0 {
		t.Errorf("%d requests were sent by invalid configurations", n)
	}
	if _, err := ParseMaxTime("abc"); err == nil || !strings.Contains(err.Error(), "neither minutes") {
		t.Errorf("ParseMaxTime: %v", err)
	}
	for in, want := range map[string]time.Duration{"30": 30 * time.Minute, "0.5": 30 * time.Second, "90s": 90 * time.Second, "1h": time.Hour, "0": 0} {
		if got, err := ParseMaxTime(in); err != nil || got != want {
			t.Errorf("ParseMaxTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}
