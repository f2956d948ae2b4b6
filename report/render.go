package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Render writes the report in format: text, markdown, json, csv or html.
func Render(w io.Writer, r *Report, format string) error {
	switch format {
	case "text", "":
		return WriteText(w, r)
	case "markdown", "md":
		return WriteMarkdown(w, r)
	case "json":
		return WriteJSON(w, r)
	case "csv":
		return WriteCSV(w, r)
	case "html":
		return WriteHTML(w, r)
	}
	return fmt.Errorf("--format %q is not one of %s", format, strings.Join(Formats, ", "))
}

// WriteJSON writes the report as indented JSON (schema: docs/report.md).
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// WriteText writes the report for a terminal: aligned columns, no markup.
func WriteText(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	d := buildDocument(r, false)
	first := true
	for _, b := range d.blocks {
		switch b.kind {
		case bHeading:
			if !first {
				bw.WriteString("\n")
			}
			title := b.text
			if b.level <= 2 {
				title = strings.ToUpper(title)
			}
			bw.WriteString(title + "\n")
			if b.level <= 2 {
				ch := "="
				if b.level == 2 {
					ch = "-"
				}
				bw.WriteString(strings.Repeat(ch, utf8.RuneCountInString(title)) + "\n")
			}
		case bPara:
			bw.WriteString(b.text + "\n")
		case bBullets:
			for _, it := range b.items {
				bw.WriteString("  • " + it + "\n")
			}
		case bTable:
			textTable(bw, b.table)
		case bDetails:
			// the full recorded meta is long: json, markdown and html show it
		}
		first = false
	}
	if len(r.Provenance) > 0 {
		bw.WriteString("Full recorded meta of each run: --format json, markdown or html.\n")
	}
	return bw.Flush()
}

func textTable(w *bufio.Writer, t *table) {
	widths := make([]int, len(t.header))
	for i, h := range t.header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, row := range t.rows {
		for i, c := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		var sb strings.Builder
		for i, c := range cells {
			if i > 0 {
				sb.WriteString("  ")
			}
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if t.right[i] {
				sb.WriteString(pad + c)
			} else if i < len(cells)-1 {
				sb.WriteString(c + pad)
			} else {
				sb.WriteString(c)
			}
		}
		w.WriteString(strings.TrimRight(sb.String(), " ") + "\n")
	}
	line(t.header)
	rule := make([]string, len(widths))
	for i, n := range widths {
		rule[i] = strings.Repeat("-", n)
	}
	line(rule)
	for _, row := range t.rows {
		line(row)
	}
}

// WriteMarkdown writes the report in the reference study's Markdown
// layout, with the sections it did not have after its own.
func WriteMarkdown(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	d := buildDocument(r, false)
	for i, b := range d.blocks {
		if i > 0 {
			bw.WriteString("\n")
		}
		switch b.kind {
		case bHeading:
			bw.WriteString(strings.Repeat("#", b.level) + " " + b.text + "\n")
		case bPara:
			bw.WriteString(mdEscape(b.text) + "\n")
		case bBullets:
			for _, it := range b.items {
				bw.WriteString("- " + mdEscape(it) + "\n")
			}
		case bTable:
			mdTable(bw, b.table)
		case bDetails:
			fmt.Fprintf(bw, "<details><summary>%s</summary>\n\n```json\n%s\n```\n\n</details>\n", htmlEscape(b.summary), b.text)
		}
	}
	return bw.Flush()
}

func mdTable(w *bufio.Writer, t *table) {
	row := func(cells []string, bold bool) {
		w.WriteString("|")
		for i, c := range cells {
			c = strings.ReplaceAll(mdEscape(c), "|", `\|`)
			if bold && i == 0 && c != "" {
				c = "**" + c + "**"
			}
			w.WriteString(" " + c + " |")
		}
		w.WriteString("\n")
	}
	row(t.header, false)
	w.WriteString("|")
	for i := range t.header {
		if t.right[i] {
			w.WriteString("---:|")
		} else {
			w.WriteString("---|")
		}
	}
	w.WriteString("\n")
	for _, r := range t.rows {
		row(r, t.bold)
	}
}

// mdEscape keeps Markdown from reading characters of data as markup.
func mdEscape(s string) string {
	r := strings.NewReplacer("*", `\*`, "_", `\_`, "<", "&lt;", "`", "\\`")
	return r.Replace(s)
}
