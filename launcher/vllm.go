package launcher

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Severity ranks a Finding.
type Severity string

// Severities, from fatal to informative.
const (
	// SeverityError: the server will not start, or will not serve what the
	// config expects.
	SeverityError Severity = "error"
	// SeverityWarning: it starts, but probably not as intended.
	SeverityWarning Severity = "warning"
	// SeverityNote: worth knowing when reading the benchmark.
	SeverityNote Severity = "note"
)

// Finding is one result of the vLLM argument check.
type Finding struct {
	// Backend is the backend (or backends, comma-separated) concerned.
	Backend string `json:"backend"`
	// Severity ranks the finding.
	Severity Severity `json:"severity"`
	// Flag is the server flag concerned, if one.
	Flag string `json:"flag,omitempty"`
	// Message is one sentence for a person.
	Message string `json:"message"`
}

// String renders "backend: severity: message".
func (f Finding) String() string {
	return fmt.Sprintf("%s: %s: %s", f.Backend, f.Severity, f.Message)
}

// HasErrors reports whether any finding is an error.
func HasErrors(fs []Finding) bool {
	for _, f := range fs {
		if f.Severity == SeverityError {
			return true
		}
	}
	return false
}

// foreignFlags are flags of other servers (or misspellings) that vLLM's
// argument parser rejects, with the vLLM flag to use instead.
var foreignFlags = map[string]struct{ from, use string }{
	"--max-running-requests":     {"an SGLang flag", "--max-num-seqs"},
	"--mem-fraction-static":      {"an SGLang flag", "--gpu-memory-utilization"},
	"--tp-size":                  {"an SGLang flag", "--tensor-parallel-size"},
	"--dp-size":                  {"an SGLang flag", "--data-parallel-size"},
	"--context-length":           {"an SGLang flag", "--max-model-len"},
	"--model-path":               {"an SGLang flag", "--model (or the model after `serve`)"},
	"--tokenizer-path":           {"an SGLang flag", "--tokenizer"},
	"--chunked-prefill-size":     {"an SGLang flag", "--max-num-batched-tokens"},
	"--max-prefill-tokens":       {"an SGLang flag", "--max-num-batched-tokens"},
	"--schedule-policy":          {"an SGLang flag", "--scheduling-policy"},
	"--disable-radix-cache":      {"an SGLang flag", "--no-enable-prefix-caching"},
	"--enable-torch-compile":     {"an SGLang flag", "-O / --compilation-config (vLLM compiles by default)"},
	"--max-concurrent-requests":  {"a TGI flag", "--max-num-seqs"},
	"--num-shard":                {"a TGI flag", "--tensor-parallel-size"},
	"--max-total-tokens":         {"a TGI flag", "--max-model-len"},
	"--max-batch-prefill-tokens": {"a TGI flag", "--max-num-batched-tokens"},
	"--model-id":                 {"a TGI flag", "--model"},
	"--max-num-seq":              {"a misspelling", "--max-num-seqs"},
	"--gpu-memory-utilisation":   {"a misspelling", "--gpu-memory-utilization"},
}

// boolFlags take no value; knowing them keeps the parser from taking the
// next positional argument as their value.
var boolFlags = map[string]bool{
	"--enable-chunked-prefill": true, "--no-enable-chunked-prefill": true, "--enforce-eager": true,
	"--trust-remote-code": true, "--enable-prefix-caching": true, "--no-enable-prefix-caching": true,
	"--disable-log-requests": true, "--enable-log-requests": true, "--disable-log-stats": true,
	"--enable-auto-tool-choice": true, "--enable-lora": true, "--disable-custom-all-reduce": true,
	"--disable-frontend-multiprocessing": true, "--enable-expert-parallel": true, "--headless": true,
	"--disable-fastapi-docs": true, "--enable-prompt-tokens-details": true, "--async-scheduling": true,
	"--disable-sliding-window": true, "--disable-radix-cache": true, "--enable-torch-compile": true,
}

// shortFlags are vLLM's short aliases.
var shortFlags = map[string]string{
	"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size",
	"-dp": "--data-parallel-size", "-q": "--quantization",
}

// serverArgs is a server command line, parsed just enough for the check.
type serverArgs struct {
	order      []string          // flags in order of appearance
	vals       map[string]string // flag → last value ("" for booleans)
	served     []string          // --served-model-name values
	positional []string
}

func parseServerArgs(args []string) serverArgs {
	a := serverArgs{vals: map[string]string{}}
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	for i := 0; i < len(args); i++ {
		tok := args[i]
		if !strings.HasPrefix(tok, "-") || tok == "-" {
			a.positional = append(a.positional, tok)
			continue
		}
		name, val, hasVal := strings.Cut(tok, "=")
		if long, ok := shortFlags[name]; ok {
			name = long
		} else if strings.HasPrefix(name, "--") {
			name = "--" + strings.ReplaceAll(name[2:], "_", "-")
		}
		a.order = append(a.order, name)
		if name == "--served-model-name" {
			if hasVal {
				a.served = append(a.served, val)
			}
			for !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				a.served = append(a.served, args[i+1])
				i++
			}
			continue
		}
		if !hasVal && !boolFlags[name] && i+1 < len(args) && !isFlag(args[i+1]) {
			val = args[i+1]
			i++
		}
		a.vals[name] = val
	}
	return a
}

func isFlag(s string) bool {
	if !strings.HasPrefix(s, "-") {
		return false
	}
	_, err := strconv.ParseFloat(s, 64)
	return err != nil
}

func (a serverArgs) has(name string) bool { _, ok := a.vals[name]; return ok }

// intVal parses a flag's integer value; vLLM also accepts "4k" (×1000) and
// "4K" (×1024). ok is false when the flag is absent or does not parse.
func (a serverArgs) intVal(name string) (int, bool) {
	v, present := a.vals[name]
	if !present || v == "" {
		return 0, false
	}
	mult := 1
	switch v[len(v)-1] {
	case 'k':
		mult = 1000
	case 'K':
		mult = 1024
	case 'm':
		mult = 1000 * 1000
	case 'M':
		mult = 1 << 20
	}
	if mult != 1 {
		v = v[:len(v)-1]
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, false
	}
	return n * mult, true
}

// servedNames are the model names the server answers to, or nil when the
// command line does not say (the server's default model).
func (a serverArgs) servedNames() []string {
	if len(a.served) > 0 {
		return a.served
	}
	if m := a.vals["--model"]; m != "" {
		return []string{m}
	}
	if len(a.positional) > 0 {
		return []string{a.positional[0]}
	}
	return nil
}

// gpuMemUtil is --gpu-memory-utilization or vLLM's default 0.9.
func (a serverArgs) gpuMemUtil() float64 {
	if v, err := strconv.ParseFloat(a.vals["--gpu-memory-utilization"], 64); err == nil {
		return v
	}
	return 0.9
}

// gpusNeeded is tensor × pipeline × data parallel size.
func (a serverArgs) gpusNeeded() int {
	n := 1
	for _, f := range []string{"--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size"} {
		if v, ok := a.intVal(f); ok && v > 0 {
			n *= v
		}
	}
	return n
}

// IsVLLM reports whether a spec runs vLLM: its image name or entrypoint
// says so. Only those specs are checked.
func IsVLLM(s *Spec) bool {
	return strings.Contains(strings.ToLower(s.Image), "vllm") || s.Entrypoint == "vllm" ||
		strings.HasSuffix(s.Entrypoint, "/vllm")
}

// Check runs the vLLM argument check over specs that run vLLM: flags vLLM
// does not accept (other servers' flags, misspellings), settings that
// contradict each other or the launch section, and backends that would
// fight over the same GPUs when started together.
func Check(specs []Spec) []Finding {
	var out []Finding
	type gpuUse struct {
		backend string
		util    float64
	}
	byGPU := map[string][]gpuUse{}
	var gpuOrder []string
	for i := range specs {
		s := &specs[i]
		if !IsVLLM(s) {
			continue
		}
		a := parseServerArgs(s.Args)
		out = append(out, checkOne(s, a)...)
		for _, g := range usedGPUs(s, a.gpusNeeded()) {
			if _, ok := byGPU[g]; !ok {
				gpuOrder = append(gpuOrder, g)
			}
			byGPU[g] = append(byGPU[g], gpuUse{s.Backend, a.gpuMemUtil()})
		}
	}
	// One warning per group of backends that would share a GPU beyond its
	// memory; a group inside one already reported adds nothing.
	type group struct {
		names []string
		gpu   string
		total float64
	}
	var groups []group
	for _, g := range gpuOrder {
		uses := byGPU[g]
		if len(uses) < 2 {
			continue
		}
		gr := group{gpu: g}
		for _, u := range uses {
			gr.names = append(gr.names, u.backend)
			gr.total += u.util
		}
		if gr.total > 1.0001 {
			groups = append(groups, gr)
		}
	}
	sort.SliceStable(groups, func(i, j int) bool { return len(groups[i].names) > len(groups[j].names) })
	var reported [][]string
	for _, gr := range groups {
		covered := false
		for _, r := range reported {
			if subset(gr.names, r) {
				covered = true
				break
			}
		}
		if covered {
			continue
		}
		reported = append(reported, gr.names)
		out = append(out, Finding{
			Backend: strings.Join(gr.names, ", "), Severity: SeverityWarning, Flag: "--gpu-memory-utilization",
			Message: fmt.Sprintf("these backends all run on GPU %s and together reserve %.0f%% of its memory (--gpu-memory-utilization, default 0.9), so they cannot run at the same time; give each its own device ids (e.g. gpus = \"0,1\" and gpus = \"2,3\") or launch them one at a time",
				gr.gpu, math.Round(gr.total*100)),
		})
	}
	return out
}

// subset reports whether every element of a is in b.
func subset(a, b []string) bool {
	for _, x := range a {
		if !contains(b, x) {
			return false
		}
	}
	return true
}

// usedGPUs are the GPUs a vLLM server occupies: the first `need` of those
// it is given ("all" and counts are taken as indexes from 0).
func usedGPUs(s *Spec, need int) []string {
	g := s.GPURequest
	var ids []string
	switch {
	case len(g.DeviceIDs) > 0:
		ids = g.DeviceIDs
		if need < len(ids) {
			ids = ids[:need]
		}
	case g.All || g.Count > 0:
		n := need
		if g.Count > 0 && g.Count < n {
			n = g.Count
		}
		for i := 0; i < n; i++ {
			ids = append(ids, strconv.Itoa(i))
		}
	}
	return ids
}

func checkOne(s *Spec, a serverArgs) []Finding {
	var out []Finding
	add := func(sev Severity, flag, format string, args ...any) {
		out = append(out, Finding{Backend: s.Backend, Severity: sev, Flag: flag, Message: fmt.Sprintf(format, args...)})
	}
	seen := map[string]bool{}
	for _, f := range a.order {
		if ff, ok := foreignFlags[f]; ok && !seen[f] {
			seen[f] = true
			add(SeverityError, f, "%s is %s that vLLM does not accept, so the server exits at start-up with \"unrecognized arguments\"; use %s", f, ff.from, ff.use)
		}
	}

	// GPUs given versus GPUs needed.
	need := a.gpusNeeded()
	switch n := s.GPURequest.N(); {
	case n == 0:
		add(SeverityWarning, "", "no GPUs are requested (set gpus = \"all\", a count or device ids), and vLLM's GPU images do not start without one")
	case n > 0 && need > n:
		add(SeverityError, "--tensor-parallel-size", "tensor × pipeline × data parallel size needs %d GPUs but gpus = %q gives the container %d", need, s.GPUs, n)
	}

	// Scheduler limits vLLM checks at start-up.
	mnbt, hasMNBT := a.intVal("--max-num-batched-tokens")
	mml, hasMML := a.intVal("--max-model-len")
	chunkedOff := a.has("--no-enable-chunked-prefill") || strings.EqualFold(a.vals["--enable-chunked-prefill"], "false")
	if chunkedOff && hasMNBT && hasMML && mnbt < mml {
		add(SeverityError, "--max-num-batched-tokens", "--max-num-batched-tokens %d is smaller than --max-model-len %d with chunked prefill off, which vLLM refuses at start-up; raise it to at least %d or enable chunked prefill", mnbt, mml, mml)
	}
	if seqs, ok := a.intVal("--max-num-seqs"); ok && hasMNBT && mnbt < seqs {
		add(SeverityError, "--max-num-batched-tokens", "--max-num-batched-tokens %d is smaller than --max-num-seqs %d, which vLLM refuses at start-up", mnbt, seqs)
	}
	if a.has("--enable-chunked-prefill") && !chunkedOff {
		add(SeverityNote, "--enable-chunked-prefill", "chunked prefill is already on by default in vLLM's V1 engine (0.8 and later), so a baseline without this flag has it too and it does not explain a difference")
	}
	if v := a.vals["--gpu-memory-utilization"]; v != "" {
		if u, err := strconv.ParseFloat(v, 64); err != nil || u <= 0 || u > 1 {
			add(SeverityError, "--gpu-memory-utilization", "--gpu-memory-utilization %s is not a fraction in (0, 1]", v)
		}
	}

	// Where the server listens versus what is published.
	if h, ok := a.vals["--host"]; ok && h != "" && h != "0.0.0.0" && h != "::" {
		add(SeverityError, "--host", "--host %s listens only inside the container, out of reach of the published port; use --host 0.0.0.0", h)
	}
	port := 8000
	if p, ok := a.intVal("--port"); ok {
		port = p
	}
	if port != s.ContainerPort {
		add(SeverityError, "--port", "the server listens on port %d in the container but launch.container_port is %d, so the health check can never succeed", port, s.ContainerPort)
	}

	// The model the proxy asks for versus the names the server answers to.
	if served := a.servedNames(); s.Model != "" && served != nil && !contains(served, s.Model) {
		add(SeverityWarning, "--served-model-name", "the proxy sends model %q to this backend but the server answers to %s; set backend.model to one of those or add --served-model-name %s",
			s.Model, quoteList(served), s.Model)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = strconv.Quote(s)
	}
	sort.Strings(q)
	return strings.Join(q, ", ")
}
