package wire

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

func TestEventEndAndData(t *testing.T) {
	cases := []struct {
		in   string
		end  int
		data string
	}{
		{"data: {\"a\":1}\n\nrest", 15, `{"a":1}`},
		{"data: x\r\n\r\n", 11, "x"},
		{"data:x\r\rmore", 8, "x"},
		{"data: a\ndata: b\n\n", 17, "a\nb"},
		{": comment\ndata: y\n\n", 19, "y"},
		{"data: partial\n", -1, "partial"},
	}
	for _, c := range cases {
		if got := EventEnd([]byte(c.in)); got != c.end {
			t.Errorf("EventEnd(%q) = %d, want %d", c.in, got, c.end)
		}
		ev := c.in
		if c.end > 0 {
			ev = c.in[:c.end]
		}
		if got := string(EventData([]byte(ev))); got != c.data {
			t.Errorf("EventData(%q) = %q, want %q", ev, got, c.data)
		}
	}
}

// FuzzEventEnd checks the vectorised EventEnd against the byte loop.
func FuzzEventEnd(f *testing.F) {
	for _, s := range []string{"data: a\n\nx", "a\r\n\r\nb", "a\r\rb", "a\n\r\n", "\n", "a\nb\n\n", "a\r\nb\n\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if got, want := EventEnd(p), eventEndSlow(p); got != want {
			t.Fatalf("EventEnd(%q) = %d, byte loop %d", p, got, want)
		}
	})
}

// checkJSONString asserts that AppendJSONString's output is a JSON string
// body that decodes back to s (with invalid UTF-8 replaced, as encoding/json
// also does).
func checkJSONString(t *testing.T, s string) {
	t.Helper()
	out := AppendJSONString([]byte(`"`), s)
	out = append(out, '"')
	var back string
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatalf("AppendJSONString(%q) = %s: not JSON: %v", s, out, err)
	}
	if want := strings.ToValidUTF8(s, "\ufffd"); back != want && utf8.ValidString(s) {
		t.Fatalf("AppendJSONString(%q) decodes to %q", s, back)
	}
	if bytes.Contains(out, []byte(`\u003c`)) {
		t.Fatalf("escaped '<' unlike Python: %s", out)
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\" back\\ nl\n cr\r tab\t", "\x00\x1f\b\f", "<&>", "héllo 世界 🎉", "bad \xff utf8"} {
		checkJSONString(t, s)
	}
	if got := string(AppendJSONString(nil, "a\x01<")); got != `a\u0001<` {
		t.Fatalf("got %s", got)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\xff\xfe", "\u2028", "🎉\x00"} {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

func TestChunkedBodyDecodes(t *testing.T) {
	// A trailer after the last chunk must be consumed so that the next
	// response on a pooled connection starts where br stands.
	in := "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 200"
	br := bufio.NewReader(strings.NewReader(in))
	got, err := io.ReadAll(NewChunkedBody(br))
	if err != nil || string(got) != "hello world" {
		t.Fatalf("got %q, %v", got, err)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "HTTP/1.1 200" {
		t.Fatalf("connection left at %q", rest)
	}
	if _, err := io.ReadAll(NewChunkedBody(bufio.NewReader(strings.NewReader("5\r\nhel")))); err == nil {
		t.Fatal("a truncated chunk read without error")
	}
}

func TestChoiceTextAndUsage(t *testing.T) {
	var p fastjson.Parser
	for in, want := range map[string]string{
		`{"delta":{"content":"a","reasoning_content":"r"}}`: "a",
		`{"delta":{"content":"","reasoning_content":"r"}}`:  "r",
		`{"delta":{"reasoning":"q"}}`:                       "q",
		`{"delta":{"role":"assistant"}}`:                    "",
		`{"text":"t"}`:                                      "t",
	} {
		v, err := p.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(ChoiceText(v)); got != want {
			t.Errorf("ChoiceText(%s) = %q, want %q", in, got, want)
		}
	}
	pt, ct := -1, -1
	null, _ := p.Parse(`{"usage":null}`)
	ReadUsage(null, &pt, &ct)
	if pt != -1 || ct != -1 {
		t.Fatalf("null usage changed the counts: %d %d", pt, ct)
	}
	usage, _ := p.Parse(`{"usage":{"prompt_tokens":7,"completion_tokens":3}}`)
	ReadUsage(usage, &pt, &ct)
	if pt != 7 || ct != 3 {
		t.Fatalf("usage read as %d %d", pt, ct)
	}
}
