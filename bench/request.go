package bench

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"

	"github.com/valyala/fastjson"

	"github.com/abproxy/abproxy/internal/wire"
)

// job is one planned request.
type job struct {
	index     int
	warmup    bool
	body      []byte
	planIn    int  // planned prompt tokens, chat template included
	planOut   int  // max_tokens; 0 when not sent
	raised    bool // the sampled input was raised to the template's minimum
	exact     bool // planIn is exact
	promptSHA string
}

// planner turns request indexes into request bodies. It is deterministic:
// request i of a run is the same for every arm and for every invocation
// with the same seed, scenario and load level, whatever the timing.
type planner struct {
	shaper     *Shaper
	sc         Scenario
	seed, key  uint64
	body       *bodyBuilder
	hashPrompt bool // compute the prompt hash as the proxy does (runs without a proxy)
	parser     fastjson.Parser
	buf        []byte
}

func newPlanner(sh *Shaper, sc Scenario, seed int64, key string, body *bodyBuilder, hashPrompt bool) *planner {
	h := fnv.New64a()
	h.Write([]byte(key))
	return &planner{shaper: sh, sc: sc, seed: uint64(seed), key: h.Sum64(), body: body, hashPrompt: hashPrompt}
}

// rng returns the random source of request i, independent of every other
// request's.
func (p *planner) rng(i int) *rand.Rand {
	return rand.New(rand.NewPCG(splitmix(p.seed^0x6a09e667f3bcc909), splitmix(p.key+uint64(i)*0x9e3779b97f4a7c15)))
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// job plans request i. It is not safe for concurrent use (one planner per
// generator goroutine).
func (p *planner) job(i int, warmup bool) *job {
	r := p.rng(i)
	in, out := p.sc.Sample(r)
	j := &job{index: i, warmup: warmup, planOut: out, exact: p.shaper.Exact()}
	var x string
	if p.sc.Kind == Dataset {
		x, j.planIn = p.shaper.Line(r)
	} else {
		j.raised = in < p.shaper.MinPrompt()
		var ok bool
		x, j.planIn, ok = p.shaper.Shape(r, in)
		j.exact = j.exact && ok
	}
	j.body = p.body.build(x, out)
	if p.hashPrompt {
		j.promptSHA = p.promptSHA(j.body)
	}
	return j
}

// promptSHA is the proxy's prompt hash: SHA-256 of the messages value as
// fastjson re-serialises it, so rows written by bench join with the proxy's.
func (p *planner) promptSHA(body []byte) string {
	v, err := p.parser.ParseBytes(body)
	if err != nil {
		return ""
	}
	m := v.Get("messages")
	if m == nil {
		return ""
	}
	p.buf = m.MarshalTo(p.buf[:0])
	sum := sha256.Sum256(p.buf)
	return hex.EncodeToString(sum[:])
}

// bodyBuilder renders genai-bench's request body: model, messages,
// max_tokens, temperature 0, ignore_eos, stream with include_usage, and the
// additional request parameters merged last (a parameter named like a
// base field replaces it, null removes it; the others follow in sorted
// order).
type bodyBuilder struct {
	model  []byte // JSON value
	system string
	params map[string]json.RawMessage
	extra  []string // params keys that are not base fields, sorted
}

// baseFields are the fields bench writes itself, in order, after model
// and messages.
var baseFields = []string{"max_tokens", "temperature", "ignore_eos", "stream", "stream_options"}

// newBodyBuilder checks the additional parameters (a JSON object; "" for
// none). system_message is taken as the system message, as in genai-bench.
func newBodyBuilder(model, additional string) (*bodyBuilder, error) {
	q := append(wire.AppendJSONString([]byte{'"'}, model), '"')
	b := &bodyBuilder{model: q, params: map[string]json.RawMessage{}}
	if additional != "" {
		if err := json.Unmarshal([]byte(additional), &b.params); err != nil || b.params == nil {
			return nil, fmt.Errorf("--additional-request-params is not a JSON object: %s", additional)
		}
	}
	if raw, ok := b.params["system_message"]; ok {
		if err := json.Unmarshal(raw, &b.system); err != nil {
			return nil, fmt.Errorf("--additional-request-params: system_message must be a string")
		}
		delete(b.params, "system_message")
	}
	if _, ok := b.params["messages"]; ok {
		return nil, fmt.Errorf("--additional-request-params must not set messages: bench generates them (use system_message for a system prompt)")
	}
	if raw, ok := b.params["stream"]; ok && string(bytes.TrimSpace(raw)) != "true" {
		return nil, fmt.Errorf("--additional-request-params must not turn stream off: bench measures streamed responses")
	}
	if raw, ok := b.params["model"]; ok {
		b.model = bytes.TrimSpace(raw)
		delete(b.params, "model")
	}
	for k := range b.params {
		if !slices.Contains(baseFields, k) {
			b.extra = append(b.extra, k)
		}
	}
	slices.Sort(b.extra)
	return b, nil
}

// build renders one body with user content x and max_tokens out (0: none).
func (b *bodyBuilder) build(x string, out int) []byte {
	buf := make([]byte, 0, len(x)+len(b.system)+256)
	buf = append(buf, `{"model":`...)
	buf = append(buf, b.model...)
	buf = append(buf, `,"messages":[`...)
	if b.system != "" {
		buf = append(buf, `{"role":"system","content":"`...)
		buf = wire.AppendJSONString(buf, b.system)
		buf = append(buf, `"},`...)
	}
	buf = append(buf, `{"role":"user","content":"`...)
	buf = wire.AppendJSONString(buf, x)
	buf = append(buf, `"}]`...)
	for _, k := range baseFields {
		if raw, ok := b.params[k]; ok {
			if !isNull(raw) {
				buf = appendField(buf, k, raw)
			}
			continue
		}
		switch k {
		case "max_tokens":
			if out > 0 {
				buf = append(buf, `,"max_tokens":`...)
				buf = strconv.AppendInt(buf, int64(out), 10)
			}
		case "temperature":
			buf = append(buf, `,"temperature":0`...)
		case "ignore_eos":
			buf = append(buf, `,"ignore_eos":`...)
			buf = strconv.AppendBool(buf, out > 0)
		case "stream":
			buf = append(buf, `,"stream":true`...)
		case "stream_options":
			buf = append(buf, `,"stream_options":{"include_usage":true}`...)
		}
	}
	for _, k := range b.extra {
		if raw := b.params[k]; !isNull(raw) {
			buf = appendField(buf, k, raw)
		}
	}
	return append(buf, '}')
}

// isNull reports a parameter set to null, which removes the field (e.g.
// {"ignore_eos": null} for a server that rejects vLLM's extra fields).
func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func appendField(buf []byte, k string, raw json.RawMessage) []byte {
	buf = append(buf, ',', '"')
	buf = wire.AppendJSONString(buf, k)
	buf = append(buf, '"', ':')
	return append(buf, bytes.TrimSpace(raw)...)
}
