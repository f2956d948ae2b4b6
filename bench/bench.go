package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fastjson"

	"github.com/abproxy/abproxy/internal/fdtable"
	"github.com/abproxy/abproxy/internal/reqid"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/tokenizer"
)

// ErrInterrupted is returned by Run when its context was cancelled (Ctrl-C):
// finished runs are kept, the current one is marked incomplete.
var ErrInterrupted = errors.New("interrupted")

// dbProbeTimeout bounds the wait for the proxy's record of the preflight
// request (the proxy's recorder writes within ~50 ms).
var dbProbeTimeout = 5 * time.Second

// chatPath is the endpoint bench drives.
const chatPath = "/v1/chat/completions"

// Options are the parts of a benchmark that are not flags.
type Options struct {
	// Out receives one summary line per finished run and a final table;
	// nil discards them.
	Out io.Writer
	// Progress receives progress lines and warnings; nil discards them.
	Progress io.Writer
	// TTY redraws progress lines in place (Progress is a terminal).
	TTY bool
	// ProgressInterval is how often progress is printed when not on a
	// terminal; 0 means 10 s. On a terminal it is redrawn 4 times a second.
	ProgressInterval time.Duration
	// OnResult, when set, is called with every request's result (warmup
	// included) from the goroutine that sent it, so it must be quick and
	// safe for concurrent use. ChunkNS is nil by then (Chunks has the
	// count); the result must not be modified.
	OnResult func(r *Result)
	// Tokenizer, when set, is the tokenizer already loaded from
	// Config.Tokenizer's directory, so a caller that has it (the demo,
	// tests) does not load it twice.
	Tokenizer *tokenizer.Tokenizer
	// Version and Args go into run metadata.
	Version string
	Args    []string
	// NewScraper makes the scraper of the backends' /metrics
	// (Config.Scrape, Config.ScrapeInterval); store writes rows into
	// bench's database. cmd/abproxy passes one built on admin.Scraper.
	// Nil turns scraping off.
	NewScraper func(targets []ScrapeTarget, store func([]recorder.BackendMetric) error) Scraper
}

// arm is one backend bench sends to.
type arm struct {
	backend string // name: X-ABProxy-Backend through a proxy, a label otherwise
	model   string
	body    *bodyBuilder
}

// Bench is a prepared benchmark: flags checked, tokenizer and corpus
// loaded, target and backends verified. Nothing has been sent yet.
type Bench struct {
	cfg       Config
	opts      Options
	scenarios []Scenario
	shaper    *Shaper
	corpus    *Corpus
	tokInfo   map[string]any
	ep        *endpoint
	proxy     bool
	arms      []*arm
	store     *store
	server    string // GET /version of a direct target
	prefix    string
	scrape    *scrapeState // nil when not scraping
	ids       reqid.Gen
	out, prog io.Writer
}

// New checks the configuration, loads the tokenizer and corpus, and checks
// the target (reachable, an OpenAI server, the backends known to the proxy,
// the database being the proxy's) before any load is sent. Each error is
// one sentence.
func New(ctx context.Context, cfg Config, opts Options) (*Bench, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	b := &Bench{cfg: cfg, opts: opts, out: opts.Out, prog: opts.Progress}
	if b.out == nil {
		b.out = io.Discard
	}
	if b.prog == nil {
		b.prog = io.Discard
	}
	for _, s := range cfg.Scenarios {
		sc, _ := ParseScenario(s)
		b.scenarios = append(b.scenarios, sc)
	}
	b.ids.Init()
	// thousands of streams open thousands of sockets: size the descriptor
	// table before the clock starts (see internal/fdtable)
	_, _ = fdtable.Reserve(fdtable.Max)
	b.prefix = cfg.RunName
	if b.prefix == "" {
		b.prefix = "bench-" + time.Now().Format("20060102-150405")
	}

	var tok *tokenizer.Tokenizer
	if cfg.Tokenizer != "" {
		if tok = opts.Tokenizer; tok == nil {
			var err error
			if tok, err = loadTokenizer(cfg.Tokenizer); err != nil {
				return nil, err
			}
		}
		b.tokInfo = tokenizerInfo(cfg.Tokenizer)
	}
	if cfg.Dataset != "" {
		var err error
		if b.corpus, err = LoadCorpus(cfg.Dataset); err != nil {
			return nil, err
		}
	} else {
		b.corpus = GeneratedCorpus()
	}
	// the system message is checked here, the model per arm after preflight
	probe, err := newBodyBuilder("", cfg.AdditionalParams)
	if err != nil {
		return nil, err
	}
	b.shaper = NewShaper(tok, b.corpus, probe.system)

	ua := "abproxy-bench"
	if opts.Version != "" {
		ua += "/" + opts.Version
	}
	if b.ep, err = newEndpoint(cfg.Target, cfg.APIKey, ua, cfg.IdleTimeout); err != nil {
		return nil, err
	}
	if err := b.preflight(ctx); err != nil {
		b.Close()
		return nil, err
	}
	if err := b.setupScraper(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// loadTokenizer loads --tokenizer with an error that says what is missing.
func loadTokenizer(dir string) (*tokenizer.Tokenizer, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("--tokenizer %s: no such directory", dir)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("--tokenizer %s is a file; pass the model directory that holds tokenizer.json or vocab.json and merges.txt", dir)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		if _, e1 := os.Stat(filepath.Join(dir, "tokenizer.json")); e1 != nil {
			_, e2 := os.Stat(filepath.Join(dir, "vocab.json"))
			_, e3 := os.Stat(filepath.Join(dir, "merges.txt"))
			if e2 != nil || e3 != nil {
				return nil, fmt.Errorf("--tokenizer %s has no tokenizer files: it needs tokenizer.json, or vocab.json and merges.txt", dir)
			}
		}
		return nil, fmt.Errorf("--tokenizer %s: %w", dir, err)
	}
	return tok, nil
}

// tokenizerInfo identifies the tokenizer files in run metadata.
func tokenizerInfo(dir string) map[string]any {
	files := map[string]string{}
	for _, name := range []string{"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		sum := sha256.Sum256(data)
		files[name] = hex.EncodeToString(sum[:])
	}
	return map[string]any{"dir": dir, "sha256": files}
}

// preflight checks the target and the backends and opens the database.
func (b *Bench) preflight(ctx context.Context) error {
	first := ""
	if len(b.cfg.Backends) > 0 {
		first = b.cfg.Backends[0]
	}
	rp, err := b.ep.fetch(ctx, "/v1/models", "", nil)
	if err != nil {
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		return fmt.Errorf("cannot reach --target %s: %v", b.cfg.Target, unwrapOp(err))
	}
	b.proxy = rp.requestID != ""
	if !b.proxy {
		if rp.status != 200 {
			return fmt.Errorf("--target %s does not serve the OpenAI API: GET /v1/models answered HTTP %d (%s)", b.cfg.Target, rp.status, errorMessage(rp.body))
		}
		if len(b.cfg.Backends) > 1 {
			return fmt.Errorf("--backend %s needs --target to be an abproxy proxy, but %s answers directly (no %s header)", strings.Join(b.cfg.Backends, ","), b.cfg.Target, headerRequestID)
		}
		label := first
		if label == "" {
			label = b.ep.host
		}
		a, err := b.newArm(label, rp.body, false)
		if err != nil {
			return err
		}
		b.arms = []*arm{a}
		if vr, err := b.ep.fetch(ctx, "/version", "", nil); err == nil && vr.status == 200 {
			var p fastjson.Parser
			if v, err := p.ParseBytes(vr.body); err == nil {
				b.server = string(v.GetStringBytes("version"))
			}
		}
	}

	if b.cfg.DB != "" {
		if b.store, err = openStore(b.cfg.DB, b.proxy); err != nil {
			return err
		}
	}
	if b.proxy {
		names := b.cfg.Backends
		if len(names) == 0 {
			names = []string{""} // the proxy's default backend, pinned below
		}
		after := int64(0)
		if b.store != nil {
			after = b.store.maxRowID()
		}
		var probeID string
		for _, name := range names {
			rp, err := b.ep.fetch(ctx, "/v1/models", name, nil)
			if err != nil {
				return fmt.Errorf("cannot reach --target %s: %v", b.cfg.Target, unwrapOp(err))
			}
			if err := backendError(b.cfg.Target, name, rp); err != nil {
				return err
			}
			if name == "" {
				name = rp.backend
			}
			if name == "" {
				return fmt.Errorf("the proxy at %s did not say which backend answered; pass --backend NAME", b.cfg.Target)
			}
			a, err := b.newArm(name, rp.body, true)
			if err != nil {
				return err
			}
			b.arms = append(b.arms, a)
			probeID = rp.requestID
		}
		if b.store != nil && probeID != "" {
			ok, err := b.store.waitForID(ctx, probeID, after, dbProbeTimeout)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("the proxy at %s does not record into --db %s (its record of a test request did not appear there within %s): pass the proxy's database file with --db", b.cfg.Target, b.cfg.DB, dbProbeTimeout)
			}
		}
	}
	if b.store != nil {
		var names []string
		for _, st := range b.steps() {
			for _, a := range b.arms {
				n := b.runName(st, a)
				names = append(names, n, n+warmupSuffix)
			}
		}
		if n, err := b.store.existing(names); err != nil {
			return err
		} else if n != "" {
			return fmt.Errorf("run %q already exists in %s: choose another --run-name", n, b.cfg.DB)
		}
	}
	return nil
}

// backendError turns the proxy's answer for one backend into a sentence.
func backendError(target, name string, rp reply) error {
	if rp.status == 200 {
		return nil
	}
	msg := errorMessage(rp.body)
	if rp.status == 400 && strings.Contains(msg, "unknown backend") {
		return fmt.Errorf("--backend %s is not a backend of the proxy at %s: %s", name, target, msg)
	}
	if name == "" {
		name = rp.backend
	}
	if rp.status == 502 || rp.status == 504 {
		return fmt.Errorf("backend %s behind the proxy at %s is not answering: %s", name, target, msg)
	}
	return fmt.Errorf("backend %s behind the proxy at %s answered GET /v1/models with HTTP %d: %s", name, target, rp.status, msg)
}

// newArm picks the arm's model: --api-model-name, else the first model the
// backend lists.
func (b *Bench) newArm(name string, models []byte, proxied bool) (*arm, error) {
	var ids []string
	var p fastjson.Parser
	if v, err := p.ParseBytes(models); err == nil {
		for _, m := range v.GetArray("data") {
			if id := m.GetStringBytes("id"); len(id) > 0 {
				ids = append(ids, string(id))
			}
		}
	}
	model := b.cfg.Model
	switch {
	case model == "" && len(ids) == 0:
		return nil, fmt.Errorf("backend %s lists no model in GET /v1/models; pass --api-model-name", name)
	case model == "":
		model = ids[0]
	case len(ids) > 0 && !slices.Contains(ids, model) && !proxied:
		// through a proxy the backend's configured model may replace it
		return nil, fmt.Errorf("--api-model-name %q is not served by %s (it serves %s)", model, b.cfg.Target, strings.Join(ids, ", "))
	}
	body, err := newBodyBuilder(model, b.cfg.AdditionalParams)
	if err != nil {
		return nil, err
	}
	return &arm{backend: name, model: model, body: body}, nil
}

// Close releases the database and idle connections.
func (b *Bench) Close() error {
	b.ep.closeIdle()
	if b.store != nil {
		s := b.store
		b.store = nil
		return s.close()
	}
	return nil
}

// step is one load level of one scenario; every arm runs it at once.
type step struct {
	sc   Scenario
	conc int     // closed-loop concurrency, or the open-loop cap (0 none)
	rate float64 // open loop: requests per second; 0 for closed loop
}

func (s step) level() string {
	if s.rate > 0 {
		l := "r" + strconv.FormatFloat(s.rate, 'g', -1, 64)
		if s.conc > 0 {
			l += "-max" + strconv.Itoa(s.conc)
		}
		return l
	}
	return "c" + strconv.Itoa(s.conc)
}

// key identifies the step's request sequence (shared by the arms).
func (s step) key() string { return s.sc.String() + "/" + s.level() }

func (b *Bench) steps() []step {
	var out []step
	for _, sc := range b.scenarios {
		if len(b.cfg.RequestRates) > 0 {
			for _, r := range b.cfg.RequestRates {
				out = append(out, step{sc: sc, rate: r, conc: b.cfg.MaxConcurrency})
			}
			continue
		}
		for _, c := range b.cfg.Concurrency {
			out = append(out, step{sc: sc, conc: c})
		}
	}
	return out
}

const warmupSuffix = "#warmup"

func (b *Bench) runName(st step, a *arm) string {
	return b.prefix + "/" + st.key() + "/" + a.backend
}

// Proxy reports whether the target is an abproxy proxy.
func (b *Bench) Proxy() bool { return b.proxy }

// Backends lists the arms' backend names.
func (b *Bench) Backends() []string {
	out := make([]string, len(b.arms))
	for i, a := range b.arms {
		out[i] = a.backend
	}
	return out
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
