package report

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"strings"
)

func htmlEscape(s string) string { return html.EscapeString(s) }

const htmlStyle = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:6px 0 12px}h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;margin:8px 0 6px;font-size:13px;display:block;overflow-x:auto;max-width:100%}
th,td{padding:4px 9px;border-bottom:1px solid #e6e6e6;white-space:nowrap;text-align:left}
th{background:#f0f2f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.better{color:#1a7f37;font-weight:600}td.worse{color:#c62828;font-weight:600}td.same{color:#6b6b6b}
p{margin:6px 0}ul{margin:6px 0 6px 4px;padding-left:18px}
figure{margin:16px 0}figcaption{display:none}
details{margin:4px 0}summary{cursor:pointer;color:#333}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px;border-radius:4px}
.src{color:#666;font-size:12px}
`

// WriteHTML writes the report as one self-contained HTML page: inline CSS
// and SVG charts, no script, nothing loaded from the network.
func WriteHTML(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	d := buildDocument(r, true)
	ch := charts(r)
	bw.WriteString("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
	bw.WriteString("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n")
	fmt.Fprintf(bw, "<title>abproxy report — %s</title>\n", htmlEscape(r.Database))
	bw.WriteString("<style>" + htmlStyle + "</style>\n</head>\n<body>\n<main>\n")
	for _, b := range d.blocks {
		switch b.kind {
		case bHeading:
			fmt.Fprintf(bw, "<h%d>%s</h%d>\n", b.level, htmlEscape(b.text), b.level)
		case bPara:
			cls := ""
			if strings.HasPrefix(b.text, "Runs: ") {
				cls = ` class="src"`
			}
			fmt.Fprintf(bw, "<p%s>%s</p>\n", cls, htmlEscape(b.text))
		case bBullets:
			bw.WriteString("<ul>\n")
			for _, it := range b.items {
				fmt.Fprintf(bw, "<li>%s</li>\n", htmlEscape(it))
			}
			bw.WriteString("</ul>\n")
		case bTable:
			htmlTable(bw, b.table)
		case bDetails:
			fmt.Fprintf(bw, "<details><summary>%s</summary><pre>%s</pre></details>\n", htmlEscape(b.summary), htmlEscape(b.text))
		case bChart:
			if svg := ch[b.chart]; svg != "" {
				fmt.Fprintf(bw, "<figure id=\"chart-%s\">%s</figure>\n", b.chart, svg)
			}
		}
	}
	bw.WriteString("</main>\n</body>\n</html>\n")
	return bw.Flush()
}

func htmlTable(w *bufio.Writer, t *table) {
	w.WriteString("<table>\n<thead><tr>")
	for i, h := range t.header {
		cls := ""
		if t.right[i] {
			cls = ` class="n"`
		}
		fmt.Fprintf(w, "<th%s>%s</th>", cls, htmlEscape(h))
	}
	w.WriteString("</tr></thead>\n<tbody>\n")
	for _, row := range t.rows {
		w.WriteString("<tr>")
		for i, c := range row {
			var cls []string
			if t.right[i] {
				cls = append(cls, "n")
			}
			switch c {
			case "better":
				cls = append(cls, "better")
			case "worse":
				cls = append(cls, "worse")
			case "cannot tell apart", "too few samples":
				cls = append(cls, "same")
			}
			attr := ""
			if len(cls) > 0 {
				attr = ` class="` + strings.Join(cls, " ") + `"`
			}
			cell := htmlEscape(c)
			if t.bold && i == 0 {
				cell = "<strong>" + cell + "</strong>"
			}
			fmt.Fprintf(w, "<td%s>%s</td>", attr, cell)
		}
		w.WriteString("</tr>\n")
	}
	w.WriteString("</tbody>\n</table>\n")
}
