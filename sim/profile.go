package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// Profile is the capacity and speed of one simulated server. All durations
// are at speedup 1; Options.Speedup divides them.
//
// The model behind it is the one in shared/data/sim-calibration.md: a decode
// step costs StepBase plus StepPerSeq per running sequence, prefill costs
// tokens/PrefillTokensPerSec, and a request is admitted only when its prompt
// plus max_tokens fits in the KV budget. That is enough to reproduce the
// reference study's shape: latency at low concurrency set by StepBase,
// throughput rising with concurrency until the KV budget stops admission,
// after which extra concurrency only adds queueing to TTFT.
//
// When a Profile is decoded directly (toml or json tags), durations are
// integer nanoseconds, as for any time.Duration. LoadProfile and
// ProfileFromMap also accept strings such as "19.5ms".
type Profile struct {
	// Name labels the profile in logs and errors.
	Name string `toml:"name" json:"name"`
	// MaxNumSeqs caps the running batch, like vLLM's --max-num-seqs.
	MaxNumSeqs int `toml:"max_num_seqs" json:"max_num_seqs"`
	// KVCapacityTokens is the KV cache size in tokens; a request is admitted
	// only when the running requests' prompt+max_tokens plus its own fit.
	KVCapacityTokens int `toml:"kv_capacity_tokens" json:"kv_capacity_tokens"`
	// MaxModelLen is the context limit; prompt+max_tokens above it is a 400.
	MaxModelLen int `toml:"max_model_len" json:"max_model_len"`
	// PrefillTokensPerSec is the prefill speed; a step that prefills n tokens
	// lasts n/PrefillTokensPerSec longer.
	PrefillTokensPerSec float64 `toml:"prefill_tokens_per_sec" json:"prefill_tokens_per_sec"`
	// PrefillChunkTokens is the per-step prefill budget (chunked prefill).
	// 0 disables chunking: each prompt is prefilled whole in one step, with at
	// most max(MaxModelLen, 2048) prompt tokens per step, like vLLM without
	// chunked prefill.
	PrefillChunkTokens int `toml:"prefill_chunk_tokens" json:"prefill_chunk_tokens"`
	// StepBase is the decode step time at a tiny batch (reading the weights).
	StepBase time.Duration `toml:"step_base" json:"step_base"`
	// StepPerSeq is the extra step time per running sequence.
	StepPerSeq time.Duration `toml:"step_per_seq" json:"step_per_seq"`
	// Jitter is the relative random spread of each step time (0.05 = ±5%),
	// drawn from a generator seeded by Options.Seed.
	Jitter float64 `toml:"jitter" json:"jitter"`
	// DefaultMaxTokens is max_tokens when the request gives none (capped by
	// the context left). vLLM would use the whole remaining context, but
	// admission here reserves max_tokens of KV, so the default must be modest.
	DefaultMaxTokens int `toml:"default_max_tokens" json:"default_max_tokens"`
}

// builtinProfiles are shaped after sim-calibration.md (Qwen2.5-14B, 2×4090).
// baseline: bf16, util 0.90, no chunked prefill, vLLM's default context.
// optimized: FP8, util 0.98, chunked prefill with a 4096-token budget,
// max-model-len 4096 and a larger batch, as in the reference study.
var builtinProfiles = map[string]Profile{
	"baseline": {
		Name:                "baseline",
		MaxNumSeqs:          256,
		KVCapacityTokens:    55_000,
		MaxModelLen:         32_768,
		PrefillTokensPerSec: 5_000,
		PrefillChunkTokens:  0,
		StepBase:            19_500 * time.Microsecond,
		StepPerSeq:          250 * time.Microsecond,
		Jitter:              0.03,
		DefaultMaxTokens:    1024,
	},
	"optimized": {
		Name:                "optimized",
		MaxNumSeqs:          1024,
		KVCapacityTokens:    135_000,
		MaxModelLen:         4_096,
		PrefillTokensPerSec: 8_000,
		PrefillChunkTokens:  4_096,
		StepBase:            13 * time.Millisecond,
		StepPerSeq:          200 * time.Microsecond,
		Jitter:              0.03,
		DefaultMaxTokens:    1024,
	},
}

// BuiltinProfile returns a built-in profile by name: "baseline" or "optimized".
func BuiltinProfile(name string) (Profile, bool) {
	p, ok := builtinProfiles[name]
	return p, ok
}

// BuiltinProfileNames lists the built-in profile names, sorted, for help
// texts and error messages.
func BuiltinProfileNames() []string {
	names := make([]string, 0, len(builtinProfiles))
	for n := range builtinProfiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// LoadProfile returns the built-in profile with that name, or loads a profile
// file (TOML, or JSON when the name ends in .json). A file may set
// base = "baseline" (or "optimized") and override only some keys; without a
// base every key is required. Durations are strings like "19.5ms".
func LoadProfile(nameOrPath string) (Profile, error) {
	if p, ok := BuiltinProfile(nameOrPath); ok {
		return p, nil
	}
	data, err := os.ReadFile(nameOrPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !strings.ContainsAny(nameOrPath, `/\.`) {
			return Profile{}, fmt.Errorf("sim profile %q is neither a built-in profile (%s) nor a file",
				nameOrPath, strings.Join(BuiltinProfileNames(), ", "))
		}
		return Profile{}, fmt.Errorf("read sim profile: %w", err)
	}
	m := map[string]any{}
	if strings.EqualFold(filepath.Ext(nameOrPath), ".json") {
		err = json.Unmarshal(data, &m)
	} else {
		err = toml.Unmarshal(data, &m)
	}
	if err != nil {
		return Profile{}, fmt.Errorf("parse sim profile %s: %w", nameOrPath, err)
	}
	if _, ok := m["name"]; !ok {
		base := filepath.Base(nameOrPath)
		m["name"] = strings.TrimSuffix(base, filepath.Ext(base))
	}
	p, err := ProfileFromMap(m)
	if err != nil {
		return Profile{}, fmt.Errorf("sim profile %s: %w", nameOrPath, err)
	}
	return p, nil
}

// ProfileFromMap builds a profile from decoded TOML or JSON (snake_case keys,
// the same keys as a profile file), so a config file can embed a profile
// table. An optional "base" key names a built-in profile to start from.
// Unknown keys are errors, because a typo would otherwise silently keep a
// default.
func ProfileFromMap(m map[string]any) (Profile, error) {
	var p Profile
	complete := false
	if b, ok := m["base"]; ok {
		name, ok := b.(string)
		if !ok {
			return Profile{}, fmt.Errorf("base must be a string naming a built-in profile")
		}
		bp, ok := BuiltinProfile(name)
		if !ok {
			return Profile{}, fmt.Errorf("base %q is not a built-in profile (%s)", name,
				strings.Join(BuiltinProfileNames(), ", "))
		}
		p, complete = bp, true
	}
	seen := map[string]bool{}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic error order
	for _, k := range keys {
		v := m[k]
		var err error
		switch k {
		case "base":
			continue
		case "name":
			s, ok := v.(string)
			if !ok {
				err = errors.New("must be a string")
			}
			p.Name = s
		case "max_num_seqs":
			p.MaxNumSeqs, err = mapInt(v)
		case "kv_capacity_tokens":
			p.KVCapacityTokens, err = mapInt(v)
		case "max_model_len":
			p.MaxModelLen, err = mapInt(v)
		case "prefill_tokens_per_sec":
			p.PrefillTokensPerSec, err = mapFloat(v)
		case "prefill_chunk_tokens":
			p.PrefillChunkTokens, err = mapInt(v)
		case "step_base":
			p.StepBase, err = mapDuration(v)
		case "step_per_seq":
			p.StepPerSeq, err = mapDuration(v)
		case "jitter":
			p.Jitter, err = mapFloat(v)
		case "default_max_tokens":
			p.DefaultMaxTokens, err = mapInt(v)
		default:
			return Profile{}, fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return Profile{}, fmt.Errorf("key %s: %w", k, err)
		}
		seen[k] = true
	}
	if !complete {
		// Without a base, a missing key would silently be zero; name the first.
		for _, k := range []string{"max_num_seqs", "kv_capacity_tokens", "max_model_len",
			"prefill_tokens_per_sec", "prefill_chunk_tokens", "step_base", "step_per_seq",
			"jitter", "default_max_tokens"} {
			if !seen[k] {
				return Profile{}, fmt.Errorf("key %s is missing (or set base = \"baseline\" to start from a built-in profile)", k)
			}
		}
	}
	if err := p.Validate(); err != nil {
		return Profile{}, err
	}
	return p, nil
}

// Validate reports the first setting that would make the simulation
// meaningless or hang, as one sentence.
func (p Profile) Validate() error {
	switch {
	case p.MaxNumSeqs < 1:
		return fmt.Errorf("max_num_seqs must be at least 1, got %d", p.MaxNumSeqs)
	case p.KVCapacityTokens < 1:
		return fmt.Errorf("kv_capacity_tokens must be at least 1, got %d", p.KVCapacityTokens)
	case p.MaxModelLen < 2:
		return fmt.Errorf("max_model_len must be at least 2, got %d", p.MaxModelLen)
	case p.MaxModelLen > p.KVCapacityTokens:
		// Otherwise a request the server accepts could never be admitted.
		return fmt.Errorf("max_model_len (%d) exceeds kv_capacity_tokens (%d), so a full-length request could never be scheduled",
			p.MaxModelLen, p.KVCapacityTokens)
	case !(p.PrefillTokensPerSec > 0) || math.IsInf(p.PrefillTokensPerSec, 0):
		return fmt.Errorf("prefill_tokens_per_sec must be a positive number, got %v", p.PrefillTokensPerSec)
	case p.PrefillChunkTokens < 0:
		return fmt.Errorf("prefill_chunk_tokens must be 0 (no chunking) or positive, got %d", p.PrefillChunkTokens)
	case p.StepBase <= 0:
		// A zero step would make the scheduler spin.
		return fmt.Errorf("step_base must be positive, got %s", p.StepBase)
	case p.StepPerSeq < 0:
		return fmt.Errorf("step_per_seq must not be negative, got %s", p.StepPerSeq)
	case !(p.Jitter >= 0 && p.Jitter < 1):
		return fmt.Errorf("jitter must be in [0, 1), got %v", p.Jitter)
	case p.DefaultMaxTokens < 1:
		return fmt.Errorf("default_max_tokens must be at least 1, got %d", p.DefaultMaxTokens)
	}
	return nil
}

func mapInt(v any) (int, error) {
	switch x := v.(type) {
	case int64:
		return int(x), nil
	case int:
		return x, nil
	case float64:
		if x != math.Trunc(x) || math.Abs(x) > 1<<53 {
			return 0, fmt.Errorf("must be an integer, got %v", x)
		}
		return int(x), nil
	}
	return 0, fmt.Errorf("must be an integer, got %T", v)
}

func mapFloat(v any) (float64, error) {
	switch x := v.(type) {
	case int64:
		return float64(x), nil
	case int:
		return float64(x), nil
	case float64:
		return x, nil
	}
	return 0, fmt.Errorf("must be a number, got %T", v)
}

// mapDuration accepts "19.5ms"-style strings (what people write) and integer
// nanoseconds (what a marshalled time.Duration looks like).
func mapDuration(v any) (time.Duration, error) {
	switch x := v.(type) {
	case string:
		d, err := time.ParseDuration(x)
		if err != nil {
			return 0, fmt.Errorf("must be a duration like \"19.5ms\", got %q", x)
		}
		return d, nil
	case int64, int, float64:
		n, err := mapInt(x)
		if err != nil {
			return 0, err
		}
		return time.Duration(n), nil
	}
	return 0, fmt.Errorf("must be a duration like \"19.5ms\", got %T", v)
}
