package report

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Charts are hand-written SVG: a line chart is ~200 lines of code, needs
// no dependency or font files, renders identically everywhere, and lets
// tests find each series by its data attributes.

// pt is one point of a series; label is its tooltip.
type pt struct {
	x, y  float64
	label string
}

// series is one line of a chart.
type series struct {
	name  string
	color string
	dash  string // stroke-dasharray; "" solid
	pts   []pt
	step  bool // draw as a histogram outline, filled
}

// chartSpec is one chart.
type chartSpec struct {
	id, title      string
	xLabel, yLabel string
	logX           bool // log₂ x axis with ticks at the data's x values (concurrency)
	yZero          bool // y axis starts at 0
	series         []series
}

// palette colours backends in report order (baseline first).
var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f"}

// dashes tell scenarios apart.
var dashes = []string{"", "7 4", "2 3", "10 3 2 3", "4 4"}

const (
	chartW, chartH                 = 760, 380
	padL, padR, padT, padB, legend = 72, 20, 44, 50, 22
)

// renderChart draws a chart as an inline SVG element.
func renderChart(c chartSpec) string {
	var xs, ys []float64
	for _, s := range c.series {
		for _, p := range s.pts {
			xs = append(xs, p.x)
			ys = append(ys, p.y)
		}
	}
	if len(xs) == 0 {
		return ""
	}
	rows := (len(c.series) + 2) / 3
	top := padT + rows*legend
	plotW := float64(chartW - padL - padR)
	plotH := float64(chartH - top - padB)

	xmin, xmax := slices.Min(xs), slices.Max(xs)
	ymin, ymax := slices.Min(ys), slices.Max(ys)
	if c.yZero || ymin > 0 && ymin < (ymax-ymin) {
		ymin = math.Min(0, ymin)
	}
	var xt []float64
	if c.logX {
		xmin, xmax = math.Max(xmin, 1e-9), math.Max(xmax, 1e-9)
		xt = uniqueSorted(xs)
		if len(xt) > 12 {
			xt = logTicks(xmin, xmax)
		}
	} else {
		xt = niceTicks(&xmin, &xmax, 6)
	}
	yt := niceTicks(&ymin, &ymax, 5)
	sx := func(x float64) float64 {
		if c.logX {
			if xmax == xmin {
				return padL + plotW/2
			}
			return padL + (math.Log2(x)-math.Log2(xmin))/(math.Log2(xmax)-math.Log2(xmin))*plotW
		}
		if xmax == xmin {
			return padL + plotW/2
		}
		return padL + (x-xmin)/(xmax-xmin)*plotW
	}
	sy := func(y float64) float64 {
		if ymax == ymin {
			return float64(top) + plotH/2
		}
		return float64(top) + (1-(y-ymin)/(ymax-ymin))*plotH
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" data-chart="%s" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif">`,
		c.id, chartW, chartH, chartW, chartH, htmlEscape(c.title))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="#fff"/>`, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="600" fill="#222">%s</text>`, padL, htmlEscape(c.title))
	// legend
	for i, s := range c.series {
		lx := padL + (i%3)*230
		ly := padT - 8 + (i/3)*legend
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"%s/>`, lx, ly, lx+26, ly, s.color, dashAttr(s.dash))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" fill="#333">%s</text>`, lx+32, ly+4, htmlEscape(s.name))
	}
	// grid and axes
	for _, t := range yt {
		y := sy(t)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`, padL, y, chartW-padR, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" fill="#555" text-anchor="end">%s</text>`, padL-6, y+4, tickLabel(t))
	}
	for _, t := range xt {
		x := sx(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#f0f0f0"/>`, x, top, x, float64(top)+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="#555" text-anchor="middle">%s</text>`, x, float64(top)+plotH+16, tickLabel(t))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`, padL, top, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="12" fill="#333" text-anchor="middle">%s</text>`, padL+plotW/2, chartH-10, htmlEscape(c.xLabel))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" font-size="12" fill="#333" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`,
		float64(top)+plotH/2, float64(top)+plotH/2, htmlEscape(c.yLabel))
	// series
	for _, s := range c.series {
		if len(s.pts) == 0 {
			continue
		}
		var d strings.Builder
		if s.step {
			base := sy(math.Max(ymin, 0))
			fmt.Fprintf(&d, "M%.1f %.1f", sx(s.pts[0].x), base)
			for i, p := range s.pts {
				next := p.x
				if i+1 < len(s.pts) {
					next = s.pts[i+1].x
				}
				fmt.Fprintf(&d, " L%.1f %.1f L%.1f %.1f", sx(p.x), sy(p.y), sx(next), sy(p.y))
			}
			fmt.Fprintf(&d, " L%.1f %.1f Z", sx(s.pts[len(s.pts)-1].x), base)
			fmt.Fprintf(&b, `<path class="series" data-series="%s" data-points="%d" d="%s" fill="%s" fill-opacity="0.25" stroke="%s" stroke-width="1.5"/>`,
				htmlEscape(s.name), len(s.pts), d.String(), s.color, s.color)
			continue
		}
		for i, p := range s.pts {
			cmd := "L"
			if i == 0 {
				cmd = "M"
			}
			fmt.Fprintf(&d, "%s%.1f %.1f ", cmd, sx(p.x), sy(p.y))
		}
		fmt.Fprintf(&b, `<path class="series" data-series="%s" data-points="%d" d="%s" fill="none" stroke="%s" stroke-width="2.2"%s/>`,
			htmlEscape(s.name), len(s.pts), strings.TrimSpace(d.String()), s.color, dashAttr(s.dash))
		if len(s.pts) <= 40 {
			for _, p := range s.pts {
				fmt.Fprintf(&b, `<circle class="point" cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s</title></circle>`, sx(p.x), sy(p.y), s.color, htmlEscape(p.label))
			}
		}
	}
	b.WriteString(`</svg>`)
	return b.String()
}

func dashAttr(d string) string {
	if d == "" {
		return ""
	}
	return ` stroke-dasharray="` + d + `"`
}

func uniqueSorted(v []float64) []float64 {
	out := slices.Clone(v)
	slices.Sort(out)
	return slices.Compact(out)
}

// niceTicks widens [lo, hi] to round numbers and returns ~n ticks in it.
func niceTicks(lo, hi *float64, n int) []float64 {
	if *hi == *lo {
		if *hi == 0 {
			*hi = 1
		} else {
			d := math.Abs(*hi) * 0.1
			*lo, *hi = *lo-d, *hi+d
		}
	}
	step := niceNum((*hi - *lo) / float64(n))
	*lo = math.Floor(*lo/step) * step
	*hi = math.Ceil(*hi/step) * step
	var out []float64
	for v := *lo; v <= *hi+step/2; v += step {
		out = append(out, math.Round(v/step)*step)
	}
	return out
}

// niceNum rounds x up to 1, 2, 2.5 or 5 times a power of ten.
func niceNum(x float64) float64 {
	e := math.Pow(10, math.Floor(math.Log10(x)))
	f := x / e
	switch {
	case f <= 1:
		return e
	case f <= 2:
		return 2 * e
	case f <= 2.5:
		return 2.5 * e
	case f <= 5:
		return 5 * e
	}
	return 10 * e
}

func logTicks(lo, hi float64) []float64 {
	var out []float64
	for v := math.Pow(2, math.Floor(math.Log2(lo))); v <= hi*1.0001; v *= 2 {
		if v >= lo*0.9999 {
			out = append(out, v)
		}
	}
	return out
}

// tickLabel prints a tick compactly: 1500 → 1.5k.
func tickLabel(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 5, 64)
}

// charts builds every chart the report has data for, by id.
func charts(r *Report) map[string]string {
	out := map[string]string{}
	color := map[string]string{}
	for i, b := range r.Backends {
		color[b] = palette[i%len(palette)]
	}
	scen := map[string]string{}
	for _, c := range r.Curves {
		if _, ok := scen[c.Scenario]; !ok {
			scen[c.Scenario] = dashes[len(scen)%len(dashes)]
		}
	}
	name := func(c Curve) string {
		if len(scen) > 1 {
			return c.Backend + " · " + c.Scenario
		}
		return c.Backend
	}
	sweep := func(id, title, ylabel string, y func(CurvePoint) *float64, yfmt func(*float64) string) {
		spec := chartSpec{id: id, title: title, xLabel: "concurrency", yLabel: ylabel, logX: true, yZero: true}
		for _, c := range r.Curves {
			s := series{name: name(c), color: color[c.Backend], dash: scen[c.Scenario]}
			for _, p := range c.Points {
				if p.RequestRate > 0 || p.Concurrency <= 0 || y(p) == nil {
					continue
				}
				s.pts = append(s.pts, pt{float64(p.Concurrency), *y(p), fmt.Sprintf("%s c=%d: %s", name(c), p.Concurrency, yfmt(y(p)))})
			}
			if len(s.pts) > 0 {
				spec.series = append(spec.series, s)
			}
		}
		if len(spec.series) > 0 {
			out[id] = renderChart(spec)
		}
	}
	sweep("throughput", "Output throughput vs concurrency", "output tokens/s", func(p CurvePoint) *float64 { return p.OutputThroughput }, fTok)
	sweep("ttft", "TTFT P50 vs concurrency", "TTFT P50 (ms)", func(p CurvePoint) *float64 { return p.TTFTP50 }, fAuto)

	curve := chartSpec{id: "curve", title: "Throughput–latency curve (each point one load level)", xLabel: "output tokens/s", yLabel: "E2E P50 (ms)", yZero: true}
	for _, c := range r.Curves {
		s := series{name: name(c), color: color[c.Backend], dash: scen[c.Scenario]}
		for _, p := range c.Points {
			if p.OutputThroughput == nil || p.E2EP50 == nil {
				continue
			}
			s.pts = append(s.pts, pt{*p.OutputThroughput, *p.E2EP50, fmt.Sprintf("%s %s: %s, E2E P50 %s", name(c), fLoad(p.Concurrency, p.RequestRate), fTok(p.OutputThroughput), fAuto(p.E2EP50))})
		}
		if len(s.pts) > 0 {
			curve.series = append(curve.series, s)
		}
	}
	if len(curve.series) > 0 {
		out["curve"] = renderChart(curve)
	}

	cdfChart := func(id, title, label string, get func(Distribution) []float64) {
		spec := chartSpec{id: id, title: title, xLabel: label + " (ms)", yLabel: "share of requests ≤ x", yZero: true}
		for _, d := range r.Distributions {
			v := get(d)
			if len(v) == 0 {
				continue
			}
			s := series{name: d.Backend, color: color[d.Backend]}
			for p, x := range v {
				s.pts = append(s.pts, pt{x, float64(p) / 100, fmt.Sprintf("%s P%d: %.2f ms", d.Backend, p, x)})
			}
			spec.series = append(spec.series, s)
		}
		if len(spec.series) > 0 {
			out[id] = renderChart(spec)
		}
	}
	cdfChart("cdf-e2e", "E2E latency CDF per backend (all selected requests)", "E2E latency", func(d Distribution) []float64 { return d.E2ECDF })
	cdfChart("cdf-ttft", "TTFT CDF per backend (all selected requests)", "TTFT", func(d Distribution) []float64 { return d.TTFTCDF })

	itl := chartSpec{id: "itl", title: "Inter-token latency histogram per backend", xLabel: "gap between content chunks (ms)", yLabel: "share of gaps (%)", yZero: true}
	for _, d := range r.Distributions {
		if len(d.ITL) == 0 {
			continue
		}
		total := 0
		for _, bn := range d.ITL {
			total += bn.Count
		}
		s := series{name: d.Backend, color: color[d.Backend], step: true}
		for _, bn := range d.ITL {
			s.pts = append(s.pts, pt{bn.LoMs, 100 * float64(bn.Count) / float64(total), ""})
		}
		last := d.ITL[len(d.ITL)-1]
		s.pts = append(s.pts, pt{last.HiMs, 100 * float64(last.Count) / float64(total), ""})
		itl.series = append(itl.series, s)
	}
	if len(itl.series) > 0 {
		out["itl"] = renderChart(itl)
	}
	return out
}
