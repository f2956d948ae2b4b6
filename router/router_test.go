package router

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func f(v float64) *float64 { return &v }

// within4Sigma checks a binomial count against its expectation. For 10,000
// draws the standard deviation of a 30% share is 46 decisions; 4 sigma
// means a correct router fails this about once in 16,000 runs.
func within4Sigma(t *testing.T, name string, got, n int, p float64) {
	t.Helper()
	mean := float64(n) * p
	sd := math.Sqrt(float64(n) * p * (1 - p))
	if math.Abs(float64(got)-mean) > 4*sd+0.5 {
		t.Errorf("%s: %d of %d, expected %.0f ± %.0f (4σ)", name, got, n, mean, 4*sd)
	}
}

func TestSplitMatchesWeights(t *testing.T) {
	r, err := New(Config{Weights: map[string]float64{"a": 70, "b": 20, "c": 10}}, []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 10000
	rng := rand.New(rand.NewPCG(1, 2))
	random, sticky := make([]int, 3), make([]int, 3)
	for i := 0; i < n; i++ {
		random[r.Pick(nil, rng.Float64())]++
		sticky[r.Pick([]byte(fmt.Sprintf("user-%d", i)), 0)]++
	}
	for i, p := range []float64{0.7, 0.2, 0.1} {
		within4Sigma(t, fmt.Sprintf("random arm %d", i), random[i], n, p)
		within4Sigma(t, fmt.Sprintf("sticky arm %d", i), sticky[i], n, p)
	}
}

func TestStickyKeysStayAndMoveMinimally(t *testing.T) {
	names := []string{"baseline", "optimized"}
	r1, _ := New(Config{Weights: map[string]float64{"baseline": 50, "optimized": 50}, StickyHeader: "X-User-Id"}, names)
	r2, _ := New(Config{Weights: map[string]float64{"baseline": 50, "optimized": 50}, StickyHeader: "X-User-Id"}, names)
	r3, _ := New(Config{Weights: map[string]float64{"baseline": 80, "optimized": 20}}, names)
	const n = 10000
	moved, movedWrongWay := 0, 0
	for i := 0; i < n; i++ {
		k := []byte(fmt.Sprintf("u%d", i))
		a := r1.Pick(k, 0)
		if b := r1.Pick(k, 0.99); b != a {
			t.Fatalf("key %s moved between two picks", k)
		}
		if b := r2.Pick(k, 0); b != a {
			t.Fatalf("key %s lands differently on an identical router (not stable across restarts)", k)
		}
		if c := r3.Pick(k, 0); c != a {
			moved++
			if a == 0 {
				movedWrongWay++ // baseline's share grew: no key should leave it
			}
		}
	}
	if movedWrongWay != 0 {
		t.Errorf("%d keys left the backend whose weight grew", movedWrongWay)
	}
	// minimum possible movement is the change in share: 30%
	within4Sigma(t, "keys moved by 50/50 -> 80/20", moved, n, 0.30)
}

func TestAddingABackendMovesOnlyItsShare(t *testing.T) {
	r1, _ := New(Config{Weights: map[string]float64{"a": 1, "b": 1}}, []string{"a", "b"})
	r2, _ := New(Config{Weights: map[string]float64{"a": 1, "b": 1, "c": 1}}, []string{"a", "b", "c"})
	moved := 0
	for i := 0; i < 10000; i++ {
		k := []byte(fmt.Sprintf("k%d", i))
		x, y := r1.Pick(k, 0), r2.Pick(k, 0)
		if x != y {
			if y != 2 {
				t.Fatalf("key moved between old backends %d -> %d", x, y)
			}
			moved++
		}
	}
	within4Sigma(t, "keys moved to the new backend", moved, 10000, 1.0/3)
}

func TestMirrorSampling(t *testing.T) {
	r, err := New(Config{Mode: ModeMirror, Primary: "b", Shadows: []string{"a"}, Sample: f(0.25)}, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Pick(nil, 0.1) != 1 || r.Primary() != 1 || len(r.Shadows()) != 1 || r.Shadows()[0] != 0 {
		t.Fatal("mirror mode must always pick the primary")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	random, keyed := 0, 0
	for i := 0; i < 10000; i++ {
		if r.Sampled(nil, rng.Float64()) {
			random++
		}
		k := []byte(fmt.Sprintf("user%d", i))
		s := r.Sampled(k, rng.Float64())
		if s != r.Sampled(k, rng.Float64()) {
			t.Fatal("a sticky key is sampled inconsistently")
		}
		if s {
			keyed++
		}
	}
	within4Sigma(t, "random sample", random, 10000, 0.25)
	within4Sigma(t, "keyed sample", keyed, 10000, 0.25)
}

func TestNoWeightsMeansFirstBackend(t *testing.T) {
	r, err := New(Config{}, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if r.Pick(nil, float64(i)/100) != 0 || r.Pick([]byte(fmt.Sprint(i)), 0) != 0 {
			t.Fatal("without weights every request must go to the first backend")
		}
	}
}

func TestConfigErrors(t *testing.T) {
	names := []string{"baseline", "optimized"}
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{Mode: "fanout"}, `route.mode "fanout" is not split or mirror`},
		{Config{Weights: map[string]float64{"turbo": 1}}, `route.weights names backend "turbo", which is not configured`},
		{Config{Weights: map[string]float64{"baseline": -1}}, "must be a non-negative number"},
		{Config{Weights: map[string]float64{"baseline": 0, "optimized": 0}}, "all zero"},
		{Config{Mode: ModeMirror, Primary: "x", Shadows: []string{"optimized"}}, `route.primary "x" is not a configured backend`},
		{Config{Mode: ModeMirror, Primary: "baseline"}, "needs at least one backend in route.shadows"},
		{Config{Mode: ModeMirror, Primary: "baseline", Shadows: []string{"baseline"}}, "includes the primary"},
		{Config{Mode: ModeMirror, Shadows: []string{"optimized"}, Sample: f(1.5)}, "route.sample 1.5 is not between 0 and 1"},
		{Config{Primary: "baseline"}, `only apply to mode = "mirror"`},
		{Config{MaxShadowInflight: -1}, "max_shadow_inflight must be positive"},
	}
	for _, c := range cases {
		_, err := New(c.cfg, names)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
}

func BenchmarkPickSticky(b *testing.B) {
	r, _ := New(Config{Weights: map[string]float64{"a": 1, "b": 1}}, []string{"a", "b"})
	k := []byte("user-1234567")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Pick(k, 0)
	}
}
