package bench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
)

// DefaultScenarios are genai-bench's default chat scenarios, in its order:
// fusion, chatbot/dialog, generation heavy, typical RAG, heavier RAG.
var DefaultScenarios = []string{"N(480,240)/(300,150)", "D(100,100)", "D(100,1000)", "D(2000,200)", "D(7800,200)"}

// DefaultConcurrency is genai-bench's default concurrency sweep.
var DefaultConcurrency = []int{1, 2, 4, 8, 16, 32, 64, 128, 256}

// ScenarioKind is the distribution of a traffic scenario.
type ScenarioKind uint8

// Scenario kinds, named after genai-bench's letters.
const (
	Deterministic ScenarioKind = iota + 1 // D(in,out): constant token counts
	Normal                                // N(mean_in,sd_in)/(mean_out,sd_out)
	Uniform                               // U(lo_in,hi_in)/(lo_out,hi_out) or U(hi_in,hi_out)
	Dataset                               // dataset: corpus lines as prompts, no shaping
)

// maxScenarioTokens bounds every number in a scenario, so that sampling
// can never overflow and a typo such as D(100000000,1) is caught early.
const maxScenarioTokens = 1 << 24

// Scenario is one parsed traffic scenario: how many prompt tokens each
// request has and how many output tokens it asks for. The zero value is not
// valid; use ParseScenario.
type Scenario struct {
	Kind ScenarioKind
	// In and Out are the two parameter pairs as written: D uses In[0] and
	// Out[0]; N uses (mean, sd); U uses (lo, hi), with lo 0 when the short
	// form U(hi_in,hi_out) was written.
	In, Out [2]int
	// short marks U(hi_in,hi_out), so String gives back what was written.
	short bool
}

// ParseScenario parses genai-bench's scenario grammar: D(in,out),
// N(mean_in,sd_in)/(mean_out,sd_out), U(lo_in,hi_in)/(lo_out,hi_out),
// U(hi_in,hi_out) and dataset. Spaces are ignored. The error is one sentence
// that names the scenario and shows the accepted forms.
func ParseScenario(s string) (Scenario, error) {
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, s)
	sc, why := parseScenario(compact)
	if why != "" {
		return Scenario{}, fmt.Errorf("traffic scenario %q is not valid: %s (use D(in,out), N(mean_in,sd_in)/(mean_out,sd_out), U(min_in,max_in)/(min_out,max_out), U(max_in,max_out) or dataset)", s, why)
	}
	return sc, nil
}

func parseScenario(s string) (Scenario, string) {
	if strings.EqualFold(s, "dataset") {
		return Scenario{Kind: Dataset}, ""
	}
	if s == "" {
		return Scenario{}, "it is empty"
	}
	var sc Scenario
	switch s[0] {
	case 'D':
		sc.Kind = Deterministic
	case 'N':
		sc.Kind = Normal
	case 'U':
		sc.Kind = Uniform
	default:
		return sc, fmt.Sprintf("it starts with %q, not D, N, U or dataset", firstRune(s))
	}
	first, rest, why := parsePair(s[1:])
	if why != "" {
		return sc, why
	}
	var second [2]int
	hasSecond := false
	if rest != "" {
		if rest[0] != '/' {
			return sc, fmt.Sprintf("unexpected %q after %s", rest, s[:len(s)-len(rest)])
		}
		var tail string
		second, tail, why = parsePair(rest[1:])
		if why != "" {
			return sc, why
		}
		if tail != "" {
			return sc, fmt.Sprintf("unexpected %q at the end", tail)
		}
		hasSecond = true
	}
	switch sc.Kind {
	case Deterministic:
		if hasSecond {
			return sc, "D takes one pair, D(in,out)"
		}
		sc.In[0], sc.Out[0] = first[0], first[1]
		if sc.In[0] < 1 || sc.Out[0] < 1 {
			return sc, "input and output tokens must be at least 1"
		}
	case Normal:
		if !hasSecond {
			return sc, "N takes two pairs, N(mean_in,sd_in)/(mean_out,sd_out)"
		}
		sc.In, sc.Out = first, second
	case Uniform:
		if hasSecond {
			sc.In, sc.Out = first, second
		} else {
			sc.In, sc.Out = [2]int{0, first[0]}, [2]int{0, first[1]}
			sc.short = true
		}
		if sc.In[0] > sc.In[1] || sc.Out[0] > sc.Out[1] {
			return sc, "a minimum is larger than its maximum"
		}
		if sc.In[1] < 1 || sc.Out[1] < 1 {
			return sc, "maximums must be at least 1"
		}
	}
	return sc, ""
}

// parsePair reads "(a,b)" of non-negative integers and returns the rest.
func parsePair(s string) ([2]int, string, string) {
	var p [2]int
	if s == "" || s[0] != '(' {
		return p, "", "expected \"(\""
	}
	end := strings.IndexByte(s, ')')
	if end < 0 {
		return p, "", "missing \")\""
	}
	a, b, ok := strings.Cut(s[1:end], ",")
	if !ok || strings.Contains(b, ",") {
		return p, "", fmt.Sprintf("%q must hold exactly two numbers", s[:end+1])
	}
	for i, f := range [2]string{a, b} {
		if f == "" {
			return p, "", fmt.Sprintf("%q has an empty number", s[:end+1])
		}
		for _, c := range []byte(f) {
			if c < '0' || c > '9' {
				return p, "", fmt.Sprintf("%q is not a whole number of tokens", f)
			}
		}
		v, err := strconv.Atoi(f)
		if err != nil || v > maxScenarioTokens {
			return p, "", fmt.Sprintf("%s is larger than the limit of %d tokens", f, maxScenarioTokens)
		}
		p[i] = v
	}
	return p, s[end+1:], ""
}

func firstRune(s string) string {
	for _, r := range s {
		return string(r)
	}
	return ""
}

// String gives the scenario in canonical genai-bench form, as stored in
// runs.scenario: ParseScenario(sc.String()) == sc.
func (sc Scenario) String() string {
	switch sc.Kind {
	case Deterministic:
		return fmt.Sprintf("D(%d,%d)", sc.In[0], sc.Out[0])
	case Normal:
		return fmt.Sprintf("N(%d,%d)/(%d,%d)", sc.In[0], sc.In[1], sc.Out[0], sc.Out[1])
	case Uniform:
		if sc.short {
			return fmt.Sprintf("U(%d,%d)", sc.In[1], sc.Out[1])
		}
		return fmt.Sprintf("U(%d,%d)/(%d,%d)", sc.In[0], sc.In[1], sc.Out[0], sc.Out[1])
	case Dataset:
		return "dataset"
	}
	return "invalid"
}

// Sample draws one request's (input, output) token counts with genai-bench's
// semantics: N gives max(1,⌊x⌋) input and max(2,⌊y⌋) output tokens; U
// draws ⌊uniform[lo,hi)⌋ with a minimum of 0 read as 1, then the same
// floors of 1 and 2; D is constant. Dataset gives (0, 0): the prompt is a
// corpus line as is and the server picks the output length.
func (sc Scenario) Sample(r *rand.Rand) (in, out int) {
	switch sc.Kind {
	case Deterministic:
		return sc.In[0], sc.Out[0]
	case Normal:
		in = max(1, floorInt(r.NormFloat64()*float64(sc.In[1])+float64(sc.In[0])))
		out = max(2, floorInt(r.NormFloat64()*float64(sc.Out[1])+float64(sc.Out[0])))
		return in, out
	case Uniform:
		in = max(1, floorInt(uniform(r, max(sc.In[0], 1), sc.In[1])))
		out = max(2, floorInt(uniform(r, max(sc.Out[0], 1), sc.Out[1])))
		return in, out
	}
	return 0, 0
}

// uniform is numpy's uniform(lo, hi): lo + (hi-lo)·[0,1), also for lo > hi.
func uniform(r *rand.Rand, lo, hi int) float64 {
	return float64(lo) + float64(hi-lo)*r.Float64()
}

func floorInt(x float64) int {
	f := math.Floor(x)
	switch {
	case f > maxScenarioTokens*8:
		return maxScenarioTokens * 8
	case f < -maxScenarioTokens*8:
		return -maxScenarioTokens * 8
	}
	return int(f)
}
