package sim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const testModel = "test-model"
const testCreated = 1700000000

// fastProfile steps every millisecond with no jitter, so most tests finish
// in a few milliseconds and timings are easy to reason about.
func fastProfile() Profile {
	return Profile{
		Name: "test", MaxNumSeqs: 64, KVCapacityTokens: 100_000, MaxModelLen: 4096,
		PrefillTokensPerSec: 1e7, StepBase: time.Millisecond, DefaultMaxTokens: 64,
	}
}

func testOptions() Options {
	return Options{
		Profile:     fastProfile(),
		Model:       testModel,
		Seed:        42,
		Speedup:     10, // 0.1 ms steps: long answers take milliseconds
		Created:     func() int64 { return testCreated },
		CountPrompt: func([]Message, string) int { return 7 },
	}
}

func startSim(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s, base, err := Start(opts, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, base
}

var testClient = &http.Client{
	Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true},
	Timeout:   30 * time.Second,
}

func post(t testing.TB, url, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return resp
}

// postJSON does a non-streaming request and returns status and body.
func postJSON(t testing.TB, url, body string, hdr map[string]string) (int, []byte) {
	t.Helper()
	resp := post(t, url, body, hdr)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// event is one SSE event and when the client read it.
type event struct {
	data string // the bytes after "data: ", without the blank line
	at   time.Time
}

// readEvents reads a whole SSE body, checking the framing: every event is
// "data: …\n\n" and nothing else is on the wire.
func readEvents(t testing.TB, body io.Reader) ([]event, []byte) {
	t.Helper()
	br := bufio.NewReader(body)
	var raw bytes.Buffer
	var evs []event
	for {
		line, err := br.ReadString('\n')
		raw.WriteString(line)
		if err == io.EOF && line == "" {
			break
		}
		if err != nil {
			t.Fatalf("read stream: %v (after %d events)", err, len(evs))
		}
		at := time.Now()
		if !strings.HasPrefix(line, "data: ") || !strings.HasSuffix(line, "\n") {
			t.Fatalf("unexpected line %q", line)
		}
		blank, err := br.ReadString('\n')
		raw.WriteString(blank)
		if blank != "\n" {
			t.Fatalf("event %q not followed by a blank line: %q, %v", line, blank, err)
		}
		evs = append(evs, event{data: strings.TrimSuffix(strings.TrimPrefix(line, "data: "), "\n"), at: at})
	}
	return evs, raw.Bytes()
}

// chunk is the part of a stream chunk tests look at.
type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usage `json:"usage"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func decodeChunk(t testing.TB, data string) chunk {
	t.Helper()
	var c chunk
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		t.Fatalf("chunk is not JSON: %v: %s", err, data)
	}
	return c
}

// streamResult summarises a parsed stream.
type streamResult struct {
	events   []event
	raw      []byte
	contents []string // one per content chunk
	finish   string
	usage    *usage
	firstAt  time.Time // client time of the first content chunk
}

func stream(t testing.TB, url, body string, hdr map[string]string) streamResult {
	t.Helper()
	resp := post(t, url, body, hdr)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}
	evs, raw := readEvents(t, resp.Body)
	res := streamResult{events: evs, raw: raw}
	if len(evs) == 0 || evs[len(evs)-1].data != "[DONE]" {
		t.Fatalf("stream does not end with [DONE]: %s", raw)
	}
	for _, e := range evs[:len(evs)-1] {
		c := decodeChunk(t, e.data)
		if c.Usage != nil {
			res.usage = c.Usage
			continue
		}
		ch := c.Choices[0]
		var text *string
		if ch.Delta.Content != nil {
			text = ch.Delta.Content
		} else {
			text = ch.Text
		}
		if ch.Delta.Role == nil && text != nil && *text != "" {
			if res.firstAt.IsZero() {
				res.firstAt = e.at
			}
			res.contents = append(res.contents, *text)
		}
		if ch.FinishReason != nil {
			res.finish = *ch.FinishReason
		}
	}
	return res
}

func getBody(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := testClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
