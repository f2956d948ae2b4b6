package launcher

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/abproxy/abproxy/config"
)

// studyCommands are the four commands of the reference study
// (shared/data/reference-report.md, section 2), verbatim.
var studyCommands = map[string]string{
	"14b-baseline": `docker run -d \
  --name vllm-qwen14b-baseline \
  --gpus all \
  --ipc=host \
  -p 8010:8000 \
  --entrypoint vllm \
  vllm/vllm-openai:latest \
  serve Qwen/Qwen2.5-14B-Instruct \
  --host 0.0.0.0 \
  --port 8000 \
  --tensor-parallel-size 2
`,
	"14b-optimized": `docker run -d \
  --name vllm-qwen14b-optimized \
  --gpus all \
  --ipc=host \
  -p 8011:8000 \
  -v /mnt/data/models/Qwen2.5-14B-Instruct:/model:ro \
  vllm/vllm-openai:latest \
  --model /model \
  --served-model-name /model \
  --host 0.0.0.0 \
  --port 8000 \
  --quantization fp8 \
  --tensor-parallel-size 2 \
  --gpu-memory-utilization 0.98 \
  --max-model-len 4096 \
  --enable-chunked-prefill \
  --max-running-requests 1024 \
  --max-num-batched-tokens 4096
`,
	"32b-baseline": `docker run -d \
  --name vllm-qwen32b-baseline \
  --gpus all \
  --ipc=host \
  -p 8012:8000 \
  --entrypoint vllm \
  vllm/vllm-openai:latest \
  serve Qwen/Qwen2.5-32B-Instruct \
  --host 0.0.0.0 \
  --port 8000 \
  --tensor-parallel-size 4
`,
	"32b-optimized": `docker run -d \
  --name vllm-qwen32b-optimized \
  --gpus all \
  --ipc=host \
  -p 8013:8000 \
  -v /mnt/data/models/Qwen2.5-32B-Instruct:/model:ro \
  vllm/vllm-openai:latest \
  --model /model \
  --served-model-name /model \
  --host 0.0.0.0 \
  --port 8000 \
  --quantization fp8 \
  --tensor-parallel-size 4 \
  --gpu-memory-utilization 0.85 \
  --max-model-len 4096 \
  --enable-chunked-prefill \
  --max-running-requests 1024 \
  --max-num-batched-tokens 4096
`,
}

// withoutAbproxyLabels drops the "--label abproxy.…" lines DockerRun adds.
func withoutAbproxyLabels(s string) string {
	var keep []string
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--label abproxy.") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "")
}

func TestReferenceStudyDryRunMatchesTheStudy(t *testing.T) {
	cfg, err := config.Load("../examples/reference-study.toml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(cfg, "../examples/reference-study.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Specs) != 4 {
		t.Fatalf("specs = %d, want 4", len(p.Specs))
	}
	for _, s := range p.Specs {
		want, ok := studyCommands[s.Backend]
		if !ok {
			t.Fatalf("unexpected backend %q", s.Backend)
		}
		run := s.DockerRun()
		if got := withoutAbproxyLabels(run); got != want {
			t.Errorf("%s: dry-run differs from the study\n--- got\n%s--- want\n%s", s.Backend, got, want)
		}
		for _, l := range []string{LabelManaged + "=true", LabelBackend + "=" + s.Backend, LabelConfig + "=" + p.ConfigID} {
			if !strings.Contains(run, "--label "+l+" \\\n") {
				t.Errorf("%s: dry-run lacks --label %s", s.Backend, l)
			}
		}
	}

	// The check flags the SGLang flag in both optimized commands, and only there.
	wrong := map[string]bool{}
	for _, f := range p.Findings {
		if f.Flag == "--max-running-requests" {
			if f.Severity != SeverityError || !strings.Contains(f.Message, "--max-num-seqs") || !strings.Contains(f.Message, "SGLang") {
				t.Errorf("finding = %+v", f)
			}
			wrong[f.Backend] = true
		}
	}
	if len(wrong) != 2 || !wrong["14b-optimized"] || !wrong["32b-optimized"] {
		t.Errorf("--max-running-requests flagged for %v, want both optimized backends", wrong)
	}
	// All four on gpus = "all" start on GPU 0 and cannot share it.
	shared := false
	for _, f := range p.Findings {
		if strings.Count(f.Backend, ",") == 3 && strings.Contains(f.Message, "GPU 0") && strings.Contains(f.Message, "363%") {
			shared = true
		}
	}
	if !shared {
		t.Errorf("no GPU-sharing warning in %v", p.Findings)
	}
	if !HasErrors(p.Findings) {
		t.Error("HasErrors = false")
	}
}

func TestNewPlanSelectsAndRejectsNames(t *testing.T) {
	cfg, err := config.Load("../examples/reference-study.toml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(cfg, "../examples/reference-study.toml", []string{"32b-optimized", "14b-baseline"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Specs) != 2 || p.Specs[0].Backend != "14b-baseline" || p.Specs[1].Backend != "32b-optimized" {
		t.Fatalf("specs = %+v", p.Specs)
	}
	_, err = NewPlan(cfg, "../examples/reference-study.toml", []string{"14b-baseline", "nope"})
	if !errors.Is(err, ErrUnknownBackend) || !strings.Contains(err.Error(), `no backend named "nope"`) ||
		!strings.Contains(err.Error(), "14b-baseline, 14b-optimized, 32b-baseline, 32b-optimized") {
		t.Fatalf("err = %v", err)
	}
	cfg2, err := config.Parse("x.toml", []byte("[[backend]]\nname='a'\nurl='http://127.0.0.1:1'\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewPlan(cfg2, "x.toml", []string{"a"}); !errors.Is(err, ErrUnknownBackend) || !strings.Contains(err.Error(), "no [backend.launch] section") {
		t.Fatalf("err = %v", err)
	}
	if _, err := NewPlan(cfg2, "x.toml", nil); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("err = %v", err)
	}
}

func parsePlan(t *testing.T, toml string) *Plan {
	t.Helper()
	cfg, err := config.Parse("t.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(cfg, "t.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSpecFromConfig(t *testing.T) {
	p := parsePlan(t, `
[[backend]]
name = "b"
url = "http://127.0.0.1:9100"
api_key = "k"
[backend.launch]
image = "img:1"
gpus = "device=1,3"
shm_size = "2g"
host_ip = "127.0.0.1"
volumes = ["/models/q:/model:ro", "/cache:/root/.cache"]
env = { HF_TOKEN = "${HF_TOKEN}", MODE = "fast-${SUFFIX}" }
labels = { team = "perf" }
args = ["--api-key", "sekrit", "--port", "8000", "--note", "it's"]
`)
	s := p.Specs[0]
	if s.ContainerName != "abproxy-b" || s.HostPort != 9100 || s.ContainerPort != 8000 || s.ShmBytes != 2<<30 ||
		s.HealthURL != "http://127.0.0.1:9100/health" || s.StartupTimeout != config.DefaultStartupTimeout {
		t.Fatalf("spec = %+v", s)
	}
	if got := strings.Join(s.EnvNames(), ","); got != "HF_TOKEN,MODE" {
		t.Fatalf("env names = %s", got)
	}
	if s.Labels["team"] != "perf" || s.Labels[LabelManaged] != "true" || s.Labels[LabelBackend] != "b" {
		t.Fatalf("labels = %v", s.Labels)
	}
	want := `docker run -d \
  --name abproxy-b \
  --label abproxy.backend=b \
  --label abproxy.config=` + p.ConfigID + ` \
  --label abproxy.config_path=` + p.ConfigPath + ` \
  --label abproxy.health_url=http://127.0.0.1:9100/health \
  --label abproxy.managed=true \
  --label team=perf \
  --gpus '"device=1,3"' \
  --shm-size 2g \
  -p 127.0.0.1:9100:8000 \
  -v /models/q:/model:ro \
  -v /cache:/root/.cache \
  -e HF_TOKEN \
  -e MODE \
  img:1 \
  --api-key '<redacted>' \
  --port 8000 \
  --note 'it'\''s'
`
	if got := s.DockerRun(); got != want {
		t.Fatalf("DockerRun:\n%s\nwant:\n%s", got, want)
	}

	env, err := s.expandEnv(func(k string) (string, bool) {
		v, ok := map[string]string{"HF_TOKEN": "hf_secret", "SUFFIX": "x"}[k]
		return v, ok
	})
	if err != nil || strings.Join(env, " ") != "HF_TOKEN=hf_secret MODE=fast-x" {
		t.Fatalf("env = %v, %v", env, err)
	}
	_, err = s.expandEnv(func(string) (string, bool) { return "", false })
	if err == nil || err.Error() != "env HF_TOKEN: ${HF_TOKEN} is not set in the environment" {
		t.Fatalf("err = %v", err)
	}
}

func TestRedactArgs(t *testing.T) {
	got := RedactArgs([]string{"--api-key=abc", "--x", "1", "--hf-token", "hf", "--api-key"})
	want := "--api-key=<redacted> --x 1 --hf-token <redacted> --api-key"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %v", got)
	}
}

func findingsOf(t *testing.T, toml string) []Finding {
	t.Helper()
	return parsePlan(t, toml).Findings
}

func vllmBackend(name string, port int, gpus string, args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Sprintf(`
[[backend]]
name = %q
url = "http://127.0.0.1:%d"
model = "m"
[backend.launch]
image = "vllm/vllm-openai:v0.13.0"
gpus = %q
args = [%s]
`, name, port, gpus, strings.Join(q, ", "))
}

func hasFinding(fs []Finding, sev Severity, flag, text string) bool {
	for _, f := range fs {
		if f.Severity == sev && f.Flag == flag && strings.Contains(f.Message, text) {
			return true
		}
	}
	return false
}

func TestVLLMCheck(t *testing.T) {
	cases := []struct {
		name string
		toml string
		sev  Severity
		flag string
		text string
	}{
		{"tgi flag", vllmBackend("a", 9001, "1", "--model", "m", "--max-concurrent-requests", "8"), SeverityError, "--max-concurrent-requests", "a TGI flag"},
		{"underscore form", vllmBackend("a", 9001, "1", "--model", "m", "--max_running_requests=8"), SeverityError, "--max-running-requests", "--max-num-seqs"},
		{"tp larger than gpus", vllmBackend("a", 9001, "2", "--model", "m", "--tensor-parallel-size", "4"), SeverityError, "--tensor-parallel-size", "needs 4 GPUs"},
		{"tp short flag with device ids", vllmBackend("a", 9001, "0,1", "--model", "m", "-tp", "2", "-pp", "2"), SeverityError, "--tensor-parallel-size", "needs 4 GPUs"},
		{"no chunked prefill, small batch", vllmBackend("a", 9001, "1", "--model", "m", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "2048", "--max-model-len", "4k"), SeverityError, "--max-num-batched-tokens", "smaller than --max-model-len 4000"},
		{"batch below seqs", vllmBackend("a", 9001, "1", "--model", "m", "--max-num-seqs", "1024", "--max-num-batched-tokens", "512"), SeverityError, "--max-num-batched-tokens", "smaller than --max-num-seqs 1024"},
		{"chunked prefill is default", vllmBackend("a", 9001, "1", "--model", "m", "--enable-chunked-prefill"), SeverityNote, "--enable-chunked-prefill", "default"},
		{"host inside container", vllmBackend("a", 9001, "1", "--model", "m", "--host", "127.0.0.1"), SeverityError, "--host", "--host 0.0.0.0"},
		{"port mismatch", vllmBackend("a", 9001, "1", "--model", "m", "--port", "8001"), SeverityError, "--port", "listens on port 8001"},
		{"memory fraction", vllmBackend("a", 9001, "1", "--model", "m", "--gpu-memory-utilization", "90"), SeverityError, "--gpu-memory-utilization", "not a fraction"},
		{"model name", vllmBackend("a", 9001, "1", "serve", "Qwen/Qwen2.5-14B-Instruct"), SeverityWarning, "--served-model-name", `answers to "Qwen/Qwen2.5-14B-Instruct"`},
		{"no gpus", vllmBackend("a", 9001, "", "--model", "m"), SeverityWarning, "", "no GPUs"},
		{"shared gpus", vllmBackend("a", 9001, "0,1", "--model", "m", "-tp", "2") + vllmBackend("b", 9002, "1,2", "--model", "m", "--gpu-memory-utilization", "0.5"), SeverityWarning, "--gpu-memory-utilization", "GPU 1 and together reserve 140%"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := findingsOf(t, c.toml)
			if !hasFinding(fs, c.sev, c.flag, c.text) {
				t.Fatalf("no %s on %s containing %q in %v", c.sev, c.flag, c.text, fs)
			}
		})
	}

	// A clean command, and chunked prefill with a batch budget below the
	// context length (what chunking is for), give nothing to report.
	clean := findingsOf(t, vllmBackend("a", 9001, "2", "serve", "m", "--host", "0.0.0.0", "--port", "8000", "-tp", "2",
		"--max-num-batched-tokens", "2048", "--max-model-len", "8192", "--served-model-name", "m", "alias")+
		vllmBackend("b", 9002, "2,3", "--model", "m"))
	if len(clean) != 0 {
		t.Fatalf("findings on a clean plan: %v", clean)
	}
	// Images that are not vLLM are not checked.
	if fs := findingsOf(t, "[[backend]]\nname='s'\nurl='http://127.0.0.1:9003'\n[backend.launch]\nimage='abproxy:sim'\nargs=['--max-running-requests','1']\n"); len(fs) != 0 {
		t.Fatalf("findings for a non-vLLM image: %v", fs)
	}
}

func TestParseServerArgs(t *testing.T) {
	a := parseServerArgs([]string{"serve", "model-x", "--served-model-name", "a", "b", "--enforce-eager", "--seed=3", "-q", "fp8", "--max-model-len", "2K"})
	if got := a.servedNames(); strings.Join(got, ",") != "a,b" {
		t.Fatalf("served = %v", got)
	}
	if a.positional[0] != "model-x" || a.vals["--seed"] != "3" || a.vals["--quantization"] != "fp8" || !a.has("--enforce-eager") {
		t.Fatalf("parsed = %+v", a)
	}
	if n, ok := a.intVal("--max-model-len"); !ok || n != 2048 {
		t.Fatalf("max-model-len = %d %v", n, ok)
	}
}

func TestMetadataState(t *testing.T) {
	dir := t.TempDir()
	if got := MetadataPath(filepath.Join(dir, "study.toml")); got != filepath.Join(dir, "study.launch.json") {
		t.Fatalf("path = %s", got)
	}
	path := MetadataPath(filepath.Join(dir, "config.toml"))
	st, err := ReadState(path)
	if err != nil || len(st.Backends) != 0 {
		t.Fatalf("empty state: %+v %v", st, err)
	}
	st.Config = "c"
	st.Backends["a"] = &Metadata{Backend: "a", ServedModels: []ServedModel{{ID: "m", MaxModelLen: 4096}}, EnvNames: []string{"HF_TOKEN"}}
	if err := st.Write(path); err != nil {
		t.Fatal(err)
	}
	st2, err := ReadState(path)
	if err != nil || st2.Backends["a"].ServedModels[0].MaxModelLen != 4096 || st2.UpdatedAt.IsZero() {
		t.Fatalf("round trip: %+v %v", st2, err)
	}
	delete(st2.Backends, "a")
	if err := st2.Write(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("empty state should remove the file: %v", err)
	}
	os.WriteFile(path, []byte("{"), 0o644)
	if _, err := ReadState(path); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("err = %v", err)
	}
}

func TestEngineErrorSentences(t *testing.T) {
	e := &Engine{host: "unix:///var/run/docker.sock"}
	err := e.engineError(&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !errors.Is(err, ErrEnginePermission) || !strings.Contains(err.Error(), "docker group") {
		t.Fatalf("err = %v", err)
	}
	err = e.engineError(&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
	if !errors.Is(err, ErrNoEngine) || !strings.Contains(err.Error(), "is dockerd running") {
		t.Fatalf("err = %v", err)
	}
}

func TestPrefixWriter(t *testing.T) {
	var b strings.Builder
	w := newPrefixWriter(&b, "x")
	w.Write([]byte("one\ntw"))
	w.Write([]byte("o\r\n\nthree"))
	w.Flush()
	if b.String() != "[x] one\n[x] two\n[x] three\n" {
		t.Fatalf("got %q", b.String())
	}
}
