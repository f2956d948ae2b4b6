package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/abproxy/abproxy/internal/wire"
)

const chatHead = `{"id":"chatcmpl-req-1","object":"chat.completion.chunk","created":1700000000,"model":"test-model"`

func chatBody(extra string) string {
	return `{"model":"test-model","messages":[{"role":"user","content":"Tell me about caches."}]` + extra + `}`
}

// checkJSONString asserts s is exactly one non-empty JSON string literal.
func checkJSONString(t *testing.T, s string) string {
	t.Helper()
	var v string
	if err := json.Unmarshal([]byte(s), &v); err != nil || !strings.HasPrefix(s, `"`) {
		t.Fatalf("token %s is not a JSON string: %v", s, err)
	}
	if v == "" {
		t.Fatalf("empty token text")
	}
	return v
}

func TestChatStreamFormat(t *testing.T) {
	_, base := startSim(t, testOptions())
	resp := post(t, base+"/v1/chat/completions",
		chatBody(`,"max_tokens":5,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}`),
		map[string]string{"X-Request-Id": "req-1"})
	defer resp.Body.Close()
	if got := resp.Header.Get("X-Request-Id"); got != "req-1" {
		t.Fatalf("X-Request-Id echoed as %q", got)
	}
	evs, raw := readEvents(t, resp.Body)
	if len(evs) != 8 {
		t.Fatalf("want role + 5 content + usage + [DONE] = 8 events, got %d:\n%s", len(evs), raw)
	}
	wantRole := chatHead + `,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null}`
	if evs[0].data != wantRole {
		t.Fatalf("role chunk\n got %s\nwant %s", evs[0].data, wantRole)
	}
	prefix := chatHead + `,"choices":[{"index":0,"delta":{"content":`
	for i := 1; i <= 5; i++ {
		suffix := `},"logprobs":null,"finish_reason":null,"token_ids":null}]}`
		if i == 5 {
			suffix = `},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}`
		}
		d := evs[i].data
		if !strings.HasPrefix(d, prefix) || !strings.HasSuffix(d, suffix) {
			t.Fatalf("content chunk %d:\n%s\nwant prefix %s\nand suffix %s", i, d, prefix, suffix)
		}
		checkJSONString(t, d[len(prefix):len(d)-len(suffix)])
	}
	wantUsage := chatHead + `,"choices":[],"usage":{"prompt_tokens":7,"total_tokens":12,"completion_tokens":5}}`
	if evs[6].data != wantUsage {
		t.Fatalf("usage chunk\n got %s\nwant %s", evs[6].data, wantUsage)
	}
	if evs[7].data != "[DONE]" {
		t.Fatalf("last event %q", evs[7].data)
	}
}

func TestChatStreamWithoutUsage(t *testing.T) {
	_, base := startSim(t, testOptions())
	for _, extra := range []string{`,"stream":true`, `,"stream":true,"stream_options":{"include_usage":false}`} {
		res := stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":4,"ignore_eos":true`+extra), nil)
		if res.usage != nil {
			t.Fatalf("%s: usage chunk sent though not asked for", extra)
		}
		if len(res.events) != 1+4+1 {
			t.Fatalf("%s: want 6 events, got %d", extra, len(res.events))
		}
		if len(res.contents) != 4 || res.finish != "length" {
			t.Fatalf("%s: %d content chunks, finish %q", extra, len(res.contents), res.finish)
		}
	}
}

func TestCompletionsStreamFormat(t *testing.T) {
	_, base := startSim(t, testOptions())
	resp := post(t, base+"/v1/completions",
		`{"model":"test-model","prompt":"Once upon a time","max_tokens":3,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`,
		map[string]string{"X-Request-Id": "req-2"})
	defer resp.Body.Close()
	evs, raw := readEvents(t, resp.Body)
	if len(evs) != 3+1+1 {
		t.Fatalf("want 3 content + usage + [DONE], got %d:\n%s", len(evs), raw)
	}
	head := `{"id":"cmpl-req-2","object":"text_completion","created":1700000000,"model":"test-model"`
	prefix := head + `,"choices":[{"index":0,"text":`
	for i := 0; i < 3; i++ {
		suffix := `,"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}`
		if i == 2 {
			suffix = `,"logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}],"usage":null}`
		}
		d := evs[i].data
		if !strings.HasPrefix(d, prefix) || !strings.HasSuffix(d, suffix) {
			t.Fatalf("chunk %d: %s", i, d)
		}
		checkJSONString(t, d[len(prefix):len(d)-len(suffix)])
	}
	if want := head + `,"choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}`; evs[3].data != want {
		t.Fatalf("usage chunk\n got %s\nwant %s", evs[3].data, want)
	}
}

type fullResponse struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Choices []struct {
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage usage `json:"usage"`
}

func TestNonStreamMatchesStream(t *testing.T) {
	_, base := startSim(t, testOptions())
	for _, c := range []struct {
		path, body string
	}{
		{"/v1/chat/completions", chatBody(`,"max_tokens":40,"ignore_eos":true`)},
		{"/v1/completions", `{"model":"test-model","prompt":"abc","max_tokens":40,"ignore_eos":true}`},
		{"/v1/chat/completions", chatBody(`,"max_tokens":2000,"min_tokens":3`)},
	} {
		status, b := postJSON(t, base+c.path, c.body, map[string]string{"X-Request-Id": "x"})
		if status != 200 {
			t.Fatalf("%s: status %d: %s", c.path, status, b)
		}
		var full fullResponse
		if err := json.Unmarshal(b, &full); err != nil {
			t.Fatalf("body is not JSON: %v: %s", err, b)
		}
		text := full.Choices[0].Message.Content + full.Choices[0].Text
		res := stream(t, base+c.path, strings.TrimSuffix(c.body, "}")+`,"stream":true,"stream_options":{"include_usage":true}}`, nil)
		if got := strings.Join(res.contents, ""); got != text {
			t.Fatalf("%s: streamed text differs from non-streamed\nstream: %q\nfull:   %q", c.path, got, text)
		}
		if full.Usage != *res.usage {
			t.Fatalf("%s: usage %+v vs stream %+v", c.path, full.Usage, *res.usage)
		}
		if full.Usage.CompletionTokens != len(res.contents) || full.Usage.PromptTokens != 7 ||
			full.Usage.TotalTokens != 7+len(res.contents) {
			t.Fatalf("%s: usage %+v with %d content chunks", c.path, full.Usage, len(res.contents))
		}
		if full.Choices[0].FinishReason != res.finish {
			t.Fatalf("finish %q vs %q", full.Choices[0].FinishReason, res.finish)
		}
		if c.path == "/v1/chat/completions" && (full.Object != "chat.completion" || full.ID != "chatcmpl-x" || full.Choices[0].Message.Role != "assistant") {
			t.Fatalf("chat body header: %s", b[:120])
		}
	}
}

func TestStopAndMinTokens(t *testing.T) {
	_, base := startSim(t, testOptions())
	// Without ignore_eos the sim stops at a deterministic point between 32
	// and 1024 tokens: with a generous max_tokens that is a "stop".
	res := stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":3000,"stream":true`), nil)
	if res.finish != "stop" || len(res.contents) < 32 || len(res.contents) > 1024 {
		t.Fatalf("natural stop: finish %q after %d tokens", res.finish, len(res.contents))
	}
	if last := res.contents[len(res.contents)-1]; last != stopText {
		t.Fatalf("last token of a stop is %q", last)
	}
	// min_tokens above the natural point moves it.
	res = stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":3000,"min_tokens":1100,"stream":true`), nil)
	if res.finish != "stop" || len(res.contents) != 1100 {
		t.Fatalf("min_tokens: finish %q after %d tokens", res.finish, len(res.contents))
	}
	// ignore_eos always runs to max_tokens.
	res = stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":1500,"ignore_eos":true,"stream":true`), nil)
	if res.finish != "length" || len(res.contents) != 1500 {
		t.Fatalf("ignore_eos: finish %q after %d tokens", res.finish, len(res.contents))
	}
	// A small max_tokens cuts the natural answer: "length".
	res = stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":8,"stream":true`), nil)
	if res.finish != "length" || len(res.contents) != 8 {
		t.Fatalf("short max_tokens: finish %q after %d tokens", res.finish, len(res.contents))
	}
	// max_completion_tokens wins over max_tokens, as in vLLM.
	res = stream(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":8,"max_completion_tokens":3,"stream":true`), nil)
	if len(res.contents) != 3 {
		t.Fatalf("max_completion_tokens: %d tokens", len(res.contents))
	}
}

func TestDeterminism(t *testing.T) {
	opts := testOptions()
	_, a := startSim(t, opts)
	_, b := startSim(t, opts)
	opts.Seed = 43
	_, c := startSim(t, opts)
	hdr := map[string]string{"X-Request-Id": "req-1"}
	body := chatBody(`,"max_tokens":30,"ignore_eos":true,"temperature":0,"stream":true`)

	ra := stream(t, a+"/v1/chat/completions", body, hdr)
	rb := stream(t, b+"/v1/chat/completions", body, hdr)
	if !bytes.Equal(ra.raw, rb.raw) {
		t.Fatalf("same seed and prompt gave different bytes:\n%s\n%s", ra.raw, rb.raw)
	}
	again := stream(t, a+"/v1/chat/completions", body, hdr)
	if !bytes.Equal(ra.raw, again.raw) {
		t.Fatal("same server, same request: different bytes")
	}
	rc := stream(t, c+"/v1/chat/completions", body, hdr)
	if strings.Join(ra.contents, "") == strings.Join(rc.contents, "") {
		t.Fatal("different seeds gave the same text")
	}
	other := stream(t, a+"/v1/chat/completions", strings.Replace(body, "caches", "queues", 1), hdr)
	if strings.Join(ra.contents, "") == strings.Join(other.contents, "") {
		t.Fatal("different prompts gave the same text")
	}
	// temperature > 0 changes the text but stays reproducible, and a
	// request seed changes it again.
	warm := strings.Replace(body, `"temperature":0`, `"temperature":0.7`, 1)
	w1 := stream(t, a+"/v1/chat/completions", warm, hdr)
	w2 := stream(t, a+"/v1/chat/completions", warm, hdr)
	if !bytes.Equal(w1.raw, w2.raw) {
		t.Fatal("temperature 0.7 is not reproducible")
	}
	if strings.Join(w1.contents, "") == strings.Join(ra.contents, "") {
		t.Fatal("temperature did not change the text")
	}
	seeded := stream(t, a+"/v1/chat/completions", strings.Replace(warm, `"temperature"`, `"seed":5,"temperature"`, 1), hdr)
	if strings.Join(seeded.contents, "") == strings.Join(w1.contents, "") {
		t.Fatal("request seed did not change the text at temperature > 0")
	}
}

func TestGeneratedRequestID(t *testing.T) {
	_, base := startSim(t, testOptions())
	resp := post(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":2,"stream":true`), nil)
	defer resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")
	if len(id) != 32 {
		t.Fatalf("generated X-Request-Id %q", id)
	}
	evs, _ := readEvents(t, resp.Body)
	if c := decodeChunk(t, evs[0].data); c.ID != "chatcmpl-"+id {
		t.Fatalf("chunk id %q, header id %q", c.ID, id)
	}
}

func TestErrors(t *testing.T) {
	opts := testOptions()
	opts.Profile.MaxModelLen = 100
	opts.CountPrompt = func(m []Message, p string) int { return 60 }
	_, base := startSim(t, opts)
	bad := func(msg string) string {
		return `{"error":{"message":"` + msg + `","type":"BadRequestError","param":null,"code":400}}`
	}
	cases := []struct {
		name, path, body string
		status           int
		want             string // exact body, or "" to check only the shape
	}{
		{"invalid json", "/v1/chat/completions", `{"messages":`, 400, ""},
		{"missing messages", "/v1/chat/completions", `{"model":"test-model"}`, 400, bad("Field required: messages")},
		{"missing prompt", "/v1/completions", `{"model":"test-model"}`, 400, bad("Field required: prompt")},
		{"unknown model", "/v1/chat/completions", `{"model":"gpt-x","messages":[{"role":"user","content":"hi"}]}`, 404,
			`{"error":{"message":"The model ` + "`gpt-x`" + ` does not exist.","type":"NotFoundError","param":null,"code":404}}`},
		{"negative max_tokens", "/v1/chat/completions", chatBody(`,"max_tokens":-1`), 400, bad("max_tokens must be at least 1, got -1.")},
		{"zero max_tokens", "/v1/completions", `{"prompt":"x","max_tokens":0}`, 400, bad("max_tokens must be at least 1, got 0.")},
		{"negative min_tokens", "/v1/chat/completions", chatBody(`,"max_tokens":5,"min_tokens":-2`), 400, bad("min_tokens must be greater than or equal to 0, got -2.")},
		{"min over max", "/v1/chat/completions", chatBody(`,"max_tokens":5,"min_tokens":6`), 400, bad("min_tokens must be less than or equal to max_tokens=5, got 6.")},
		{"negative temperature", "/v1/chat/completions", chatBody(`,"temperature":-1`), 400, bad("temperature must be non-negative, got -1.0.")},
		{"stream options without stream", "/v1/chat/completions", chatBody(`,"stream_options":{"include_usage":true}`), 400,
			bad("Stream options can only be defined when `stream=True`.")},
		{"n=2", "/v1/chat/completions", chatBody(`,"n":2`), 400, ""},
		{"max_model_len", "/v1/chat/completions", chatBody(`,"max_tokens":41,"stream":true`), 400,
			bad("'max_tokens' or 'max_completion_tokens' is too large: 41. This model's maximum context length is 100 tokens and your request has 60 input tokens (41 > 100 - 60).")},
		{"bad content", "/v1/chat/completions", `{"messages":[{"role":"user","content":5}]}`, 400, ""},
		{"two prompts", "/v1/completions", `{"prompt":["a","b"]}`, 400, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, b := postJSON(t, base+c.path, c.body, nil)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, b)
			}
			if c.want != "" && string(b) != c.want {
				t.Fatalf("body\n got %s\nwant %s", b, c.want)
			}
			var e struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    int     `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" || e.Error.Code != c.status || e.Error.Type == "" {
				t.Fatalf("not an OpenAI error body: %s", b)
			}
		})
	}
	// Exactly at the limit is fine; without max_tokens the default is
	// capped by the context left.
	if status, b := postJSON(t, base+"/v1/chat/completions", chatBody(`,"max_tokens":40,"ignore_eos":true`), nil); status != 200 {
		t.Fatalf("prompt+max_tokens == max_model_len rejected: %s", b)
	}
	var full fullResponse
	_, b := postJSON(t, base+"/v1/chat/completions", chatBody(`,"ignore_eos":true`), nil)
	if err := json.Unmarshal(b, &full); err != nil || full.Usage.CompletionTokens != 40 {
		t.Fatalf("default max_tokens not capped to the context left (want 40): %s", b)
	}
	// A prompt that alone fills the context.
	opts.CountPrompt = func([]Message, string) int { return 100 }
	_, base2 := startSim(t, opts)
	status, b := postJSON(t, base2+"/v1/chat/completions", chatBody(""), nil)
	if want := bad("This model's maximum context length is 100 tokens. However, your request has 100 input tokens. Please reduce the length of the input messages."); status != 400 || string(b) != want {
		t.Fatalf("prompt too long: %d %s", status, b)
	}
}

func TestSideEndpoints(t *testing.T) {
	_, base := startSim(t, testOptions())
	if status, body := getBody(t, base+"/health"); status != 200 || body != "" {
		t.Fatalf("/health: %d %q", status, body)
	}
	if status, body := getBody(t, base+"/version"); status != 200 || body != `{"version":"`+Version+`"}` {
		t.Fatalf("/version: %d %s", status, body)
	}
	status, body := getBody(t, base+"/v1/models")
	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID          string `json:"id"`
			Object      string `json:"object"`
			OwnedBy     string `json:"owned_by"`
			MaxModelLen int    `json:"max_model_len"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &models); err != nil || status != 200 || models.Object != "list" ||
		len(models.Data) != 1 || models.Data[0].ID != testModel || models.Data[0].MaxModelLen != 4096 {
		t.Fatalf("/v1/models: %d %s", status, body)
	}
	if status, body := getBody(t, base+"/nope"); status != 404 || body != `{"detail":"Not Found"}` {
		t.Fatalf("unknown route: %d %s", status, body)
	}
	if status, _ := getBody(t, base+"/v1/chat/completions"); status != 405 {
		t.Fatalf("GET on a POST route: %d", status)
	}
}

func TestMessageContentForms(t *testing.T) {
	var got [][]Message
	opts := testOptions()
	opts.CountPrompt = func(m []Message, p string) int { got = append(got, m); return 3 }
	_, base := startSim(t, opts)
	status, b := postJSON(t, base+"/v1/chat/completions",
		`{"messages":[{"role":"system","content":null},{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}],"max_tokens":1}`, nil)
	if status != 200 {
		t.Fatalf("%d %s", status, b)
	}
	want := []Message{{Role: "system", Content: ""}, {Role: "user", Content: "a\nb"}}
	if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(want) {
		t.Fatalf("CountPrompt saw %v, want %v", got, want)
	}
}

func TestApproxPromptTokens(t *testing.T) {
	opts := testOptions()
	opts.CountPrompt = nil
	_, base := startSim(t, opts)
	var full fullResponse
	_, b := postJSON(t, base+"/v1/completions", `{"prompt":"`+strings.Repeat("abcd", 25)+`","max_tokens":1}`, nil)
	if json.Unmarshal(b, &full); full.Usage.PromptTokens != 25 {
		t.Fatalf("100-byte prompt counted as %d tokens: %s", full.Usage.PromptTokens, b)
	}
	_, b = postJSON(t, base+"/v1/completions", `{"prompt":[1,2,3,4,5],"max_tokens":1}`, nil)
	if json.Unmarshal(b, &full); full.Usage.PromptTokens != 5 {
		t.Fatalf("token-id prompt counted as %d: %s", full.Usage.PromptTokens, b)
	}
	_, b = postJSON(t, base+"/v1/chat/completions", `{"messages":[{"role":"user","content":"`+strings.Repeat("x", 40)+`"}],"max_tokens":1}`, nil)
	// 3 (generation prompt) + 20 (default system prompt) + 5 + 10.
	if json.Unmarshal(b, &full); full.Usage.PromptTokens != 38 {
		t.Fatalf("chat prompt counted as %d: %s", full.Usage.PromptTokens, b)
	}
}

func TestJSONEscaping(t *testing.T) {
	for _, s := range []string{"plain", "q\"uote", `back\slash`, "nl\n\r\t\b\f", "ctl\x00\x01\x1f\x7f", "café 東京 😀",
		"bad\xffutf8", "<tag>&amp;", "\u2028"} {
		got := `"` + string(wire.AppendJSONString(nil, s)) + `"`
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Fatalf("%q escaped to invalid JSON %s: %v", s, got, err)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if back != want {
			t.Fatalf("%q round-tripped to %q", s, back)
		}
	}
	if got := string(wire.AppendJSONString(nil, "<a>&")); got != "<a>&" {
		t.Fatalf("HTML characters escaped (Python does not): %s", got)
	}
	// Every vocab entry renders to valid JSON that decodes back to itself.
	for i, w := range vocab {
		var back string
		if err := json.Unmarshal([]byte(`"`+string(vocabJSON[i])+`"`), &back); err != nil || back != w {
			t.Fatalf("vocab %q: %v", w, err)
		}
	}
}

// TestReadFallback drives a stream through Read (the path fasthttp does not
// take for chunked bodies) and expects the same events as WriteTo gives.
func TestReadFallback(t *testing.T) {
	opts := testOptions()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := &request{s: s, chat: true, id: "req-1", endpoint: "/v1/chat/completions"}
	r.notify = make(chan struct{}, 1)
	if e := s.prepare([]byte(chatBody(`,"max_tokens":7,"ignore_eos":true,"stream":true`)), r); e != nil {
		t.Fatal(e.msg)
	}
	r.created = testCreated
	r.buildPrefixes()
	s.engine.submit(&r.seq)
	evs, raw := readEvents(t, r)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1+7+1 || evs[8].data != "[DONE]" || !strings.HasPrefix(evs[0].data, chatHead) {
		t.Fatalf("Read fallback produced:\n%s", raw)
	}
}
