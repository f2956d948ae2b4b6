package bench

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestParseScenario(t *testing.T) {
	valid := []struct{ in, canon string }{
		{"D(100,100)", "D(100,100)"},
		{" D( 2000 , 200 ) ", "D(2000,200)"},
		{"N(480,240)/(300,150)", "N(480,240)/(300,150)"},
		{"N(0,0)/(0,0)", "N(0,0)/(0,0)"},
		{"U(50,100)/(200,250)", "U(50,100)/(200,250)"},
		{"U(0,100)/(0,250)", "U(0,100)/(0,250)"},
		{"U(100,200)", "U(100,200)"},
		{"U(5,5)/(7,7)", "U(5,5)/(7,7)"},
		{"dataset", "dataset"},
		{"Dataset", "dataset"},
	}
	for _, c := range valid {
		sc, err := ParseScenario(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got := sc.String(); got != c.canon {
			t.Errorf("%q: String() = %q, want %q", c.in, got, c.canon)
		}
		again, err := ParseScenario(sc.String())
		if err != nil || again != sc {
			t.Errorf("%q: round trip gave %+v, %v", c.in, again, err)
		}
	}
	invalid := []struct{ in, why string }{
		{"", "empty"},
		{"X(1,2)", "not D, N, U"},
		{"D(100)", "exactly two numbers"},
		{"D(100,100,1)", "exactly two numbers"},
		{"D(100,100)/(1,2)", "D takes one pair"},
		{"D(0,10)", "at least 1"},
		{"D(-1,10)", "whole number"},
		{"D(1.5,10)", "whole number"},
		{"D(10,)", "empty number"},
		{"D(10,10", `missing ")"`},
		{"D10,10)", `expected "("`},
		{"N(480,240)", "N takes two pairs"},
		{"N(480,240)/(300,150)x", "at the end"},
		{"N(480,240)x(300,150)", "unexpected"},
		{"U(100,50)/(1,2)", "larger than its maximum"},
		{"U(0,0)", "at least 1"},
		{"D(99999999999,1)", "limit"},
		{"D(100,100) D(1,1)", "unexpected"},
	}
	for _, c := range invalid {
		_, err := ParseScenario(c.in)
		if err == nil {
			t.Errorf("%q: no error", c.in)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.why) || !strings.Contains(msg, "D(in,out)") || strings.Contains(msg, "\n") {
			t.Errorf("%q: error %q should say %q, show the forms, and be one line", c.in, msg, c.why)
		}
	}
}

func TestScenarioSample(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	must := func(s string) Scenario {
		sc, err := ParseScenario(s)
		if err != nil {
			t.Fatal(err)
		}
		return sc
	}
	if in, out := must("D(123,45)").Sample(r); in != 123 || out != 45 {
		t.Errorf("D: %d,%d", in, out)
	}
	if in, out := must("dataset").Sample(r); in != 0 || out != 0 {
		t.Errorf("dataset: %d,%d", in, out)
	}
	// N: floors of 1 and 2, and the moments of the normal
	for range 100 {
		if in, out := must("N(0,0)/(0,0)").Sample(r); in != 1 || out != 2 {
			t.Fatalf("N(0,0)/(0,0) gave %d,%d, want 1,2", in, out)
		}
	}
	const n = 20000
	var sum, sq float64
	nsc := must("N(480,240)/(300,150)")
	for range n {
		in, out := nsc.Sample(r)
		if in < 1 || out < 2 {
			t.Fatalf("N sample %d,%d below the floors", in, out)
		}
		sum += float64(out)
		sq += float64(out) * float64(out)
	}
	mean := sum / n
	sd := math.Sqrt(sq/n - mean*mean)
	// ⌊x⌋ shifts the mean down by about 0.5; clamping at 2 barely matters here
	if math.Abs(mean-299.5) > 5 || math.Abs(sd-150) > 5 {
		t.Errorf("N output mean %.1f sd %.1f, want about 299.5 and 150", mean, sd)
	}
	// U: ⌊uniform[lo,hi)⌋, a minimum of 0 read as 1, output floor 2
	usc := must("U(10,20)/(1,3)")
	seen := map[int]bool{}
	for range 5000 {
		in, out := usc.Sample(r)
		if in < 10 || in > 19 || out < 2 || out > 2 {
			t.Fatalf("U(10,20)/(1,3) gave %d,%d", in, out)
		}
		seen[in] = true
	}
	if len(seen) != 10 {
		t.Errorf("U(10,20) hit %d values, want 10 (10..19)", len(seen))
	}
	short := must("U(100,200)")
	lo := 1 << 30
	for range 5000 {
		in, out := short.Sample(r)
		if in < 1 || in >= 100 || out < 2 || out >= 200 {
			t.Fatalf("U(100,200) gave %d,%d", in, out)
		}
		lo = min(lo, in)
	}
	if lo > 3 {
		t.Errorf("U(100,200) never drew near its implicit minimum of 1 (lowest %d)", lo)
	}
}

// FuzzParseScenario: no input panics; a parsed scenario prints back to
// itself and samples within its floors. The seed corpus is in
// testdata/fuzz/FuzzParseScenario.
func FuzzParseScenario(f *testing.F) {
	for _, s := range append(DefaultScenarios, "U(100,200)", "dataset", "D(", "N(1,2)/(3,") {
		f.Add(s)
	}
	r := rand.New(rand.NewPCG(3, 4))
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseScenario(s)
		if err != nil {
			if sc != (Scenario{}) {
				t.Fatalf("%q: error with a non-zero scenario", s)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("%q: multi-line error", s)
			}
			return
		}
		again, err := ParseScenario(sc.String())
		if err != nil || again != sc {
			t.Fatalf("%q → %q → %+v, %v", s, sc.String(), again, err)
		}
		in, out := sc.Sample(r)
		if sc.Kind != Dataset && (in < 1 || out < 1) {
			t.Fatalf("%q sampled %d,%d", s, in, out)
		}
	})
}
