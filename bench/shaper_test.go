package bench

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/abproxy/abproxy/tokenizer"
)

func TestShapeExact(t *testing.T) {
	tok, _ := qwen(t)
	c, err := LoadCorpus(sonnet(t))
	if err != nil {
		t.Fatal(err)
	}
	sh := NewShaper(tok, c, "")
	// README's arithmetic: one user message X costs 29 + tokens(X)
	if got := tok.CountChat([]tokenizer.Message{{Role: "user", Content: "Hello, world!"}}); got != 33 {
		t.Fatalf(`CountChat("Hello, world!") = %d, want 33`, got)
	}
	if sh.MinPrompt() != 30 {
		t.Errorf("MinPrompt = %d, want 30 (the template around one token)", sh.MinPrompt())
	}
	samples := 400
	if testing.Short() {
		samples = 80
	}
	r := rand.New(rand.NewPCG(5, 6))
	sizes := []int{1, 29, 30, 31, 32, 35, 36, 100, 2000, 7800}
	for range samples {
		sizes = append(sizes, 1+r.IntN(9000))
	}
	for i, n := range sizes {
		x, planned, ok := sh.Shape(rand.New(rand.NewPCG(uint64(i), 9)), n)
		if !ok {
			t.Fatalf("n=%d: no exact cut", n)
		}
		if want := max(n, 30); planned != want {
			t.Fatalf("n=%d: planned %d, want %d", n, planned, want)
		}
		got := tok.Count(tokenizer.ChatTemplate([]tokenizer.Message{{Role: "user", Content: x}}, true))
		if got != planned {
			t.Fatalf("n=%d: the rendered chat template has %d tokens, planned %d (content %q…)", n, got, planned, x[:min(len(x), 60)])
		}
		if got != 29+tok.Count(x) {
			t.Fatalf("n=%d: %d != 29 + tokens(content)", n, got)
		}
	}
}

func TestShapeSystemMessage(t *testing.T) {
	tok, _ := qwen(t)
	sh := NewShaper(tok, GeneratedCorpus(), "You are a terse assistant.")
	for _, n := range []int{1, 50, 500, 3000} {
		x, planned, ok := sh.Shape(rand.New(rand.NewPCG(uint64(n), 1)), n)
		msgs := []tokenizer.Message{{Role: "system", Content: "You are a terse assistant."}, {Role: "user", Content: x}}
		if got := tok.CountChat(msgs); !ok || got != planned || planned != max(n, sh.MinPrompt()) {
			t.Errorf("n=%d: planned %d, counted %d (min %d)", n, planned, got, sh.MinPrompt())
		}
	}
}

func TestShapeDistinctAndReproducible(t *testing.T) {
	tok, _ := qwen(t)
	c, err := LoadCorpus(sonnet(t))
	if err != nil {
		t.Fatal(err)
	}
	sh := NewShaper(tok, c, "")
	seen := map[string]int{}
	for i := range 500 {
		x, _, _ := sh.Shape(rand.New(rand.NewPCG(1, uint64(i))), 200)
		// a prefix cache works in blocks of 16 tokens after the ~20 of the
		// system turn: prompts must differ within their first block
		head := tok.Decode(tok.Encode(x)[:12])
		if j, dup := seen[head]; dup {
			t.Fatalf("prompts %d and %d share their first 12 tokens %q", j, i, head)
		}
		seen[head] = i
	}
	a, _, _ := sh.Shape(rand.New(rand.NewPCG(7, 7)), 500)
	b, _, _ := sh.Shape(rand.New(rand.NewPCG(7, 7)), 500)
	if a != b {
		t.Error("the same random state gave different prompts")
	}
}

func TestShapeApproximate(t *testing.T) {
	sh := NewShaper(nil, GeneratedCorpus(), "")
	if sh.Exact() || sh.MinPrompt() != 29 {
		t.Fatalf("exact %v min %d, want approximate with min 29 (28 of template + 1)", sh.Exact(), sh.MinPrompt())
	}
	for _, n := range []int{1, 29, 30, 100, 1234, 7800} {
		x, planned, ok := sh.Shape(rand.New(rand.NewPCG(uint64(n), 2)), n)
		if !ok || planned != max(n, 29) || sh.Count(x) != planned {
			t.Errorf("n=%d: planned %d, estimate of the result %d", n, planned, sh.Count(x))
		}
	}
}

func TestPlannerDeterministic(t *testing.T) {
	sh := NewShaper(nil, GeneratedCorpus(), "")
	sc, _ := ParseScenario("N(480,240)/(300,150)")
	bb, err := newBodyBuilder("m", "")
	if err != nil {
		t.Fatal(err)
	}
	p1 := newPlanner(sh, sc, 42, "N/c4", bb, true)
	p2 := newPlanner(sh, sc, 42, "N/c4", bb, true)
	p3 := newPlanner(sh, sc, 43, "N/c4", bb, true)
	p4 := newPlanner(sh, sc, 42, "N/c8", bb, true)
	for i := range 20 {
		a, b := p1.job(i, false), p2.job(i, false)
		if string(a.body) != string(b.body) || a.planIn != b.planIn || a.planOut != b.planOut || a.promptSHA != b.promptSHA {
			t.Fatalf("request %d differs between two planners with the same seed", i)
		}
		if string(p3.job(i, false).body) == string(a.body) || string(p4.job(i, false).body) == string(a.body) {
			t.Fatalf("request %d is the same under another seed or load level", i)
		}
	}
}

func TestBodyBuilder(t *testing.T) {
	bb, err := newBodyBuilder(`Qwen/"Q"`, "")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(bb.build("hi\n\"there\"", 100), &m); err != nil {
		t.Fatal(err)
	}
	want := `{"ignore_eos":true,"max_tokens":100,"messages":[{"content":"hi\n\"there\"","role":"user"}],"model":"Qwen/\"Q\"","stream":true,"stream_options":{"include_usage":true},"temperature":0}`
	if got, _ := json.Marshal(m); string(got) != want {
		t.Errorf("body\n%s\nwant\n%s", got, want)
	}
	// dataset mode: no max_tokens, the model may stop
	m = nil
	if err := json.Unmarshal(bb.build("x", 0), &m); err != nil || m["ignore_eos"] != false || m["max_tokens"] != nil {
		t.Errorf("dataset body: %v %v", m, err)
	}

	bb, err = newBodyBuilder("m", `{"temperature":0.7,"top_p":0.9,"ignore_eos":false,"system_message":"be brief","model":"other"}`)
	if err != nil {
		t.Fatal(err)
	}
	body := string(bb.build("x", 5))
	want = `{"model":"other","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"x"}],"max_tokens":5,"temperature":0.7,"ignore_eos":false,"stream":true,"stream_options":{"include_usage":true},"top_p":0.9}`
	if body != want {
		t.Errorf("merged body\n%s\nwant\n%s", body, want)
	}
	bb, _ = newBodyBuilder("m", `{"ignore_eos":null,"stream_options":null,"seed":null}`)
	if body := string(bb.build("x", 5)); body != `{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5,"temperature":0,"stream":true}` {
		t.Errorf("null parameters: %s", body)
	}
	for _, bad := range []string{`[1]`, `null`, `{"messages":[]}`, `{"stream":false}`, `{"system_message":3}`, `{`} {
		if _, err := newBodyBuilder("m", bad); err == nil || !strings.Contains(err.Error(), "--additional-request-params") {
			t.Errorf("%s: error %v", bad, err)
		}
	}
}

func TestLoadCorpus(t *testing.T) {
	p := sonnet(t)
	c, err := LoadCorpus(p)
	if err != nil {
		t.Fatal(err)
	}
	// ../shared/data/README.md gives the file's hash and line count
	if c.SHA256 != "d1fd4045bd182bf01be064afd35b71dc1d01ccfde01686c13f4b8448570088ef" || len(c.Lines) != 84 {
		t.Errorf("sonnet.txt: sha256 %s, %d lines", c.SHA256, len(c.Lines))
	}
	dir := t.TempDir()
	jl := filepath.Join(dir, "p.jsonl")
	os.WriteFile(jl, []byte("{\"prompt\":\"one\"}\n\n\"two\"\n{\"text\":\" three \"}\n"), 0o644)
	if c, err := LoadCorpus(jl); err != nil || strings.Join(c.Lines, "|") != "one|two|three" {
		t.Errorf("jsonl: %v %v", c, err)
	}
	sum := sha256.Sum256([]byte("{\"prompt\":\"one\"}\n\n\"two\"\n{\"text\":\" three \"}\n"))
	if c, _ := LoadCorpus(jl); c.SHA256 != hex.EncodeToString(sum[:]) {
		t.Error("jsonl hash is not the file's")
	}
	os.WriteFile(filepath.Join(dir, "bad.jsonl"), []byte("{\"x\":1}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "empty.txt"), []byte("\n  \n"), 0o644)
	for name, want := range map[string]string{
		"missing.txt": "does not exist",
		"bad.jsonl":   `line 1: has no "prompt" or "text" field`,
		"empty.txt":   "has no non-empty lines",
	} {
		_, err := LoadCorpus(filepath.Join(dir, name))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
	}
	g1, g2 := GeneratedCorpus(), GeneratedCorpus()
	if g1.SHA256 != g2.SHA256 || len(g1.Lines) != generatedLines || !g1.Generated() {
		t.Error("the generated corpus is not stable")
	}
}
