// Package router decides where each request goes: a weighted A/B split
// (random, or sticky on a key so one user always lands on the same arm) or
// a primary that serves the client plus shadows that receive a copy. It is
// pure and allocation-free per decision; the proxy swaps whole Routers
// atomically on reload.
package router

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Modes of routing.
const (
	ModeSplit  = "split"
	ModeMirror = "mirror"
)

// Config is what the router needs from config.toml's [route] section.
type Config struct {
	// Mode is "split" (each request to one backend) or "mirror" (primary
	// serves, shadows get a copy). Empty means split.
	Mode string
	// Weights per backend name for split mode; missing backends get 0.
	// Empty means everything goes to the first backend (A/B splitting is
	// opted into, never a surprise).
	Weights map[string]float64
	// StickyHeader names a request header whose value pins a user to an
	// arm (and decides mirror sampling); the OpenAI "user" field is used
	// when the header is absent. Empty: random choice per request.
	StickyHeader string
	// Primary serves the client in mirror mode (default: the first backend).
	Primary string
	// Shadows receive a copy of each sampled request in mirror mode.
	Shadows []string
	// Sample is the share of requests mirrored, 0..1; nil means 1.
	Sample *float64
	// MaxShadowInflight bounds concurrent shadow requests; above it the
	// copy is skipped and counted (0 means 256).
	MaxShadowInflight int
}

// Router is an immutable routing table over the configured backends,
// addressed by their index in the backend list.
type Router struct {
	mode        string
	names       []string
	weights     []float64 // normalised to sum 1; split mode
	cum         []float64 // cumulative weights for random picks
	logW        []float64 // -1/w for rendezvous hashing; +Inf weight 0
	seeds       []uint64  // per-backend hash seeds, from the name, stable across restarts
	sticky      string
	primary     int
	shadows     []int
	sample      float64
	maxInflight int
}

// New validates cfg against the backend names (in config order).
func New(cfg Config, backends []string) (*Router, error) {
	if len(backends) == 0 {
		return nil, errors.New("route: no backends")
	}
	r := &Router{mode: cfg.Mode, names: backends, sticky: cfg.StickyHeader, sample: 1, maxInflight: cfg.MaxShadowInflight, primary: 0}
	if r.mode == "" {
		r.mode = ModeSplit
	}
	index := map[string]int{}
	for i, n := range backends {
		index[n] = i
	}
	if cfg.Sample != nil {
		r.sample = *cfg.Sample
		if r.sample < 0 || r.sample > 1 || math.IsNaN(r.sample) {
			return nil, fmt.Errorf("route.sample %g is not between 0 and 1", r.sample)
		}
	}
	if r.maxInflight == 0 {
		r.maxInflight = 256
	}
	if r.maxInflight < 0 {
		return nil, fmt.Errorf("route.max_shadow_inflight must be positive")
	}
	for name, w := range cfg.Weights {
		if _, ok := index[name]; !ok {
			return nil, fmt.Errorf("route.weights names backend %q, which is not configured (have %s)", name, strings.Join(backends, ", "))
		}
		if w < 0 || math.IsNaN(w) || math.IsInf(w, 0) {
			return nil, fmt.Errorf("route.weights.%s = %g must be a non-negative number", name, w)
		}
	}
	r.weights = make([]float64, len(backends))
	total := 0.0
	for i, n := range backends {
		w, ok := cfg.Weights[n]
		if len(cfg.Weights) == 0 && i == 0 {
			w, ok = 1, true // no weights: everything to the first backend
		}
		if ok {
			r.weights[i] = w
			total += w
		}
	}
	switch r.mode {
	case ModeSplit:
		if total == 0 {
			return nil, errors.New("route.weights are all zero: no backend would get traffic")
		}
		if cfg.Primary != "" || len(cfg.Shadows) > 0 {
			return nil, errors.New(`route.primary and route.shadows only apply to mode = "mirror"`)
		}
	case ModeMirror:
		p, ok := index[cfg.Primary]
		if cfg.Primary == "" {
			p, ok = 0, true
		}
		if !ok {
			return nil, fmt.Errorf("route.primary %q is not a configured backend (have %s)", cfg.Primary, strings.Join(backends, ", "))
		}
		r.primary = p
		seen := map[int]bool{}
		for _, s := range cfg.Shadows {
			i, ok := index[s]
			if !ok {
				return nil, fmt.Errorf("route.shadows names %q, which is not a configured backend (have %s)", s, strings.Join(backends, ", "))
			}
			if i == p {
				return nil, fmt.Errorf("route.shadows includes the primary %q", s)
			}
			if seen[i] {
				return nil, fmt.Errorf("route.shadows names %q twice", s)
			}
			seen[i] = true
			r.shadows = append(r.shadows, i)
		}
		if len(r.shadows) == 0 {
			return nil, errors.New(`mode = "mirror" needs at least one backend in route.shadows`)
		}
		// split weights are meaningless here; the primary takes everything
		for i := range r.weights {
			r.weights[i] = 0
		}
		r.weights[p], total = 1, 1
	default:
		return nil, fmt.Errorf("route.mode %q is not split or mirror", cfg.Mode)
	}
	r.cum = make([]float64, len(backends))
	r.logW = make([]float64, len(backends))
	r.seeds = make([]uint64, len(backends))
	acc := 0.0
	for i := range r.weights {
		r.weights[i] /= total
		acc += r.weights[i]
		r.cum[i] = acc
		r.seeds[i] = hashString(backends[i])
	}
	return r, nil
}

// Mode returns ModeSplit or ModeMirror.
func (r *Router) Mode() string { return r.mode }

// StickyHeader is the header whose value is the sticky key, or "".
func (r *Router) StickyHeader() string { return r.sticky }

// Primary is the backend that serves clients in mirror mode.
func (r *Router) Primary() int { return r.primary }

// Shadows are the backends that get copies in mirror mode.
func (r *Router) Shadows() []int { return r.shadows }

// MaxShadowInflight is the bound on concurrent shadow requests.
func (r *Router) MaxShadowInflight() int { return r.maxInflight }

// Weight is backend i's share of split traffic (0..1).
func (r *Router) Weight(i int) float64 { return r.weights[i] }

// Pick chooses the backend for a request. With a sticky key the choice is
// weighted rendezvous hashing: a key stays on its backend, and a weight
// change moves only the keys that must move. Without a key, rnd (uniform
// in [0,1)) picks by weight.
func (r *Router) Pick(key []byte, rnd float64) int {
	if r.mode == ModeMirror {
		return r.primary
	}
	if len(key) == 0 {
		for i, c := range r.cum {
			if rnd < c {
				return i
			}
		}
		return len(r.cum) - 1
	}
	best, bestScore := -1, math.Inf(-1)
	h := hashBytes(key)
	for i, w := range r.weights {
		if w == 0 {
			continue
		}
		u := unit(mix(h ^ r.seeds[i]))
		// score = -w / ln(u): the max over backends is backend i with
		// probability w_i (weighted rendezvous hashing).
		s := -w / math.Log(u)
		if s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// Sampled says whether this request is mirrored: by the sticky key when
// there is one (a user is mirrored always or never), else by rnd.
func (r *Router) Sampled(key []byte, rnd float64) bool {
	if r.sample >= 1 {
		return true
	}
	if len(key) > 0 {
		rnd = unit(mix(hashBytes(key) ^ 0x5bd1e9955bd1e995))
	}
	return rnd < r.sample
}

// Describe renders the table for logs: "baseline 50%, optimized 50%".
func (r *Router) Describe() string {
	if r.mode == ModeMirror {
		sh := make([]string, len(r.shadows))
		for i, s := range r.shadows {
			sh[i] = r.names[s]
		}
		return fmt.Sprintf("mirror: primary %s, shadows %s, sample %g, max %d in flight", r.names[r.primary], strings.Join(sh, ","), r.sample, r.maxInflight)
	}
	parts := make([]string, len(r.names))
	for i, n := range r.names {
		parts[i] = fmt.Sprintf("%s %.4g%%", n, 100*r.weights[i])
	}
	s := "split: " + strings.Join(parts, ", ")
	if r.sticky != "" {
		s += ", sticky on " + r.sticky
	}
	return s
}

// FNV-1a then a splitmix64 finaliser: fast, allocation-free, and stable
// across processes (unlike hash/maphash), so stickiness survives restarts.
func hashBytes(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return mix(h)
}

func hashString(s string) uint64 { return hashBytes([]byte(s)) }

func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// unit maps a hash to (0,1), never 0 so that its log is finite.
func unit(x uint64) float64 { return (float64(x>>11) + 0.5) / (1 << 53) }
