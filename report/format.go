package report

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// dash stands for a number that cannot be computed.
const dash = "—"

// Number formats of the reference study.

// fTok is "1172.50 tok/s".
func fTok(v *float64) string {
	if v == nil {
		return dash
	}
	return fmt.Sprintf("%.2f tok/s", *v)
}

// fAuto is the study's latency style: "14.95s" from a second up, else "525.6ms".
func fAuto(v *float64) string {
	if v == nil {
		return dash
	}
	if *v >= 1000 {
		return fmt.Sprintf("%.2fs", *v/1000)
	}
	return fmt.Sprintf("%.1fms", *v)
}

// fMs is "4853.82 ms".
func fMs(v *float64) string {
	if v == nil {
		return dash
	}
	return fmt.Sprintf("%.2f ms", *v)
}

// fNum is a plain number with d decimals.
func fNum(v *float64, d int) string {
	if v == nil {
		return dash
	}
	return strconv.FormatFloat(*v, 'f', d, 64)
}

// fPct is a signed change: "+104.5%".
func fPct(v *float64) string {
	if v == nil {
		return dash
	}
	return fmt.Sprintf("%+.1f%%", *v)
}

// fShare is a share 0–1 as "12.5%".
func fShare(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) }

// fCI is an interval of changes in percent, or of differences in unit.
func fCI(c Comparison) string {
	if c.ChangeCIPct != nil {
		return fmt.Sprintf("%+.1f%% to %+.1f%%", c.ChangeCIPct.Lo, c.ChangeCIPct.Hi)
	}
	if c.DiffCI != nil {
		return fmt.Sprintf("%+.2f to %+.2f %s", c.DiffCI.Lo, c.DiffCI.Hi, c.Unit)
	}
	return dash
}

// fValue formats a comparison value in its unit.
func fValue(c Comparison, v *float64) string {
	if c.Unit == "tok/s" {
		return fTok(v)
	}
	return fMs(v)
}

// fLoad is "c=8", "4 req/s" or "4 req/s ≤8".
func fLoad(conc int, rate float64) string {
	switch {
	case rate > 0 && conc > 0:
		return fmt.Sprintf("%s req/s ≤%d", strconv.FormatFloat(rate, 'g', -1, 64), conc)
	case rate > 0:
		return strconv.FormatFloat(rate, 'g', -1, 64) + " req/s"
	case conc > 0:
		return "c=" + strconv.Itoa(conc)
	}
	return dash
}

// fTime is a UTC time to the second.
func fTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return dash
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// fStatuses is "200 ×95, 503 ×5".
func fStatuses(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	if len(parts) == 0 {
		return dash
	}
	return strings.Join(parts, ", ")
}

// fGoodput is "93.8% (15.00 req/s)".
func fGoodput(g *Goodput) string {
	if g == nil {
		return dash
	}
	if g.Rate == nil {
		return fShare(g.Share)
	}
	return fmt.Sprintf("%s (%.2f req/s)", fShare(g.Share), *g.Rate)
}

// verdictWord is the short verdict for a table cell.
func verdictWord(v string) string {
	switch v {
	case VerdictBetter:
		return "better"
	case VerdictWorse:
		return "worse"
	case VerdictSame:
		return "cannot tell apart"
	case VerdictInsufficient:
		return "too few samples"
	}
	return v
}
