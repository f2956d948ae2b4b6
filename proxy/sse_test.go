package proxy

import (
	"bytes"
	"testing"

	"github.com/valyala/fastjson"

	"github.com/abproxy/abproxy/internal/wire"
)

func TestEventBufferSplitsAcrossReads(t *testing.T) {
	stream := "data: {\"a\":1}\n\n: comment\n\ndata: x\r\n\r\ndata: [DONE]\n\n"
	want := []string{"data: {\"a\":1}\n\n", ": comment\n\n", "data: x\r\n\r\n", "data: [DONE]\n\n"}
	// every split point, so an event torn anywhere is reassembled
	for cut := 0; cut <= len(stream); cut++ {
		var b eventBuffer
		var got []string
		for _, part := range []string{stream[:cut], stream[cut:]} {
			b.feed([]byte(part))
			for {
				ev, ok := b.next()
				if !ok {
					break
				}
				got = append(got, string(ev))
			}
		}
		if len(got) != len(want) {
			t.Fatalf("cut %d: got %q", cut, got)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("cut %d: event %d = %q, want %q", cut, i, got[i], want[i])
			}
		}
		if len(b.pending()) != 0 {
			t.Fatalf("cut %d: pending %q", cut, b.pending())
		}
	}
}

func TestEventData(t *testing.T) {
	cases := map[string]string{
		"data: {\"x\":1}\n\n":        `{"x":1}`,
		"data:{\"x\":1}\n\n":         `{"x":1}`,
		"event: m\ndata: a\n\n":      "a",
		"data: a\ndata: b\n\n":       "a\nb",
		"data: a\r\ndata: b\r\n\r\n": "a\nb",
		": keepalive\n\n":            "",
		"data: [DONE]\n\n":           "[DONE]",
	}
	for in, want := range cases {
		if got := string(wire.EventData([]byte(in))); got != want {
			t.Errorf("wire.EventData(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTapClassifiesVLLMChunks(t *testing.T) {
	tp := newTap()
	tp.reset(true)
	events := []struct {
		ev   string
		want eventKind
	}{
		{`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}` + "\n\n", eventOther},
		{`data: {"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"hm"},"finish_reason":null}]}` + "\n\n", eventContent},
		{`data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi \"there\""},"finish_reason":null}]}` + "\n\n", eventContent},
		{`data: {"id":"c","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"length"}]}` + "\n\n", eventContent},
		{`data: {"id":"c","choices":[],"usage":{"prompt_tokens":33,"total_tokens":36,"completion_tokens":3}}` + "\n\n", eventUsageOnly},
		{"data: [DONE]\n\n", eventDone},
	}
	for i, e := range events {
		if got := tp.event([]byte(e.ev)); got != e.want {
			t.Fatalf("event %d: kind %d, want %d", i, got, e.want)
		}
	}
	if string(tp.text) != `hmHi "there"!` {
		t.Fatalf("text = %q", tp.text)
	}
	if tp.promptTokens != 33 || tp.completionTokens != 3 || tp.finishReason != "length" {
		t.Fatalf("usage %d/%d finish %q", tp.promptTokens, tp.completionTokens, tp.finishReason)
	}
}

func TestTapCompletionsAndErrors(t *testing.T) {
	tp := newTap()
	tp.reset(false)
	if k := tp.event([]byte(`data: {"object":"text_completion","choices":[{"index":0,"text":" a","finish_reason":null}]}` + "\n\n")); k != eventContent {
		t.Fatalf("completions text chunk: kind %d", k)
	}
	if k := tp.event([]byte(`data: {"error":{"message":"boom","type":"x","code":500}}` + "\n\n")); k != eventError || tp.errMessage != "boom" {
		t.Fatalf("error event: kind %d msg %q", k, tp.errMessage)
	}
	if k := tp.event([]byte("data: {not json\n\n")); k != eventOther {
		t.Fatalf("garbage: kind %d", k)
	}
}

func TestTapNonStreamBody(t *testing.T) {
	tp := newTap()
	tp.reset(true)
	tp.body([]byte(`{"choices":[{"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`))
	if string(tp.text) != "hello" || tp.finishReason != "stop" || tp.promptTokens != 5 || tp.completionTokens != 1 {
		t.Fatalf("tap = %q %q %d %d", tp.text, tp.finishReason, tp.promptTokens, tp.completionTokens)
	}
}

// rewrite is parse then render, for one backend (the tests' shorthand).
func (rw *rewriter) rewrite(body []byte, backendModel string) (clientRequest, []byte, error) {
	cr, err := rw.parse(body)
	if err != nil {
		return cr, nil, err
	}
	return cr, rw.render(body, cr, backendModel), nil
}

func TestRewrite(t *testing.T) {
	var rw rewriter
	body := []byte(`{"model":"a","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":7}`)
	cr, out, err := rw.rewrite(body, "b")
	if err != nil {
		t.Fatal(err)
	}
	if !cr.stream || cr.includeUsage || cr.model != "a" {
		t.Fatalf("cr = %+v", cr)
	}
	want := `{"model":"b","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":7,"stream_options":{"include_usage":true}}`
	if string(out) != want {
		t.Fatalf("out = %s", out)
	}
	// the digest, taken after render, sees the messages and leaves render's
	// result alone
	sum, prompt := rw.digest(true)
	if wantPrompt := `[{"role":"user","content":"hi"}]`; sum != promptDigest(wantPrompt) || prompt != wantPrompt {
		t.Fatalf("digest %s of %q", sum, prompt)
	}
	if string(out) != want {
		t.Fatalf("render's result changed by the digest: %s", out)
	}
	// nothing to change: the very same bytes go upstream
	body2 := []byte(`{"model":"b", "stream":false, "prompt":"x"}`)
	_, out2, _ := rw.rewrite(body2, "b")
	if !sameSlice(out2, body2) {
		t.Fatalf("unchanged body was re-encoded: %s", out2)
	}
	// include_usage already asked: kept, and remembered as the client's wish
	cr3, out3, _ := rw.rewrite([]byte(`{"model":"b","stream":true,"stream_options":{"include_usage":true},"messages":[]}`), "b")
	if !cr3.includeUsage || !bytes.Contains(out3, []byte(`"include_usage":true`)) {
		t.Fatalf("cr3 = %+v out %s", cr3, out3)
	}
	for _, bad := range []string{`{`, `[1,2]`, `"s"`, ``} {
		if _, _, err := rw.rewrite([]byte(bad), "b"); err == nil {
			t.Errorf("rewrite(%q) accepted", bad)
		}
	}
}

// FuzzEventStream feeds arbitrary bytes split at an arbitrary point and
// checks the invariants the proxy relies on: no panic, events are
// reassembled identically whatever the split, and no byte is lost.
func FuzzEventStream(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n"), uint16(5))
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n"), uint16(3))
	f.Add([]byte("\r\r\n\n\r\n\r\n"), uint16(1))
	f.Add([]byte(`data: {"error":{"message":1}}`+"\n\n"), uint16(9))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16) {
		c := int(cut) % (len(stream) + 1)
		whole := splitAll(stream, len(stream))
		parts := splitAll(stream, c)
		if len(whole) != len(parts) {
			t.Fatalf("split at %d changed the events: %q vs %q", c, whole, parts)
		}
		var total int
		for i := range whole {
			if whole[i] != parts[i] {
				t.Fatalf("event %d differs", i)
			}
			total += len(whole[i])
		}
		tp := newTap()
		tp.reset(true)
		for _, ev := range whole {
			tp.event([]byte(ev))
		}
		_ = total
	})
}

func splitAll(stream []byte, cut int) []string {
	var b eventBuffer
	var out []string
	for _, part := range [][]byte{stream[:cut], stream[cut:]} {
		b.feed(part)
		for {
			ev, ok := b.next()
			if !ok {
				break
			}
			out = append(out, string(ev))
		}
	}
	if p := b.pending(); len(p) > 0 {
		out = append(out, "PENDING:"+string(p))
	}
	return out
}

// FuzzRewrite: whatever the client sends, the proxy either refuses it as
// bad JSON or sends upstream valid JSON with the backend's model and, for
// streams, include_usage set.
func FuzzRewrite(f *testing.F) {
	f.Add([]byte(`{"model":"a","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	f.Add([]byte(`{"model":"b","stream":true,"stream_options":{"include_usage":false}}`))
	f.Add([]byte(`{"stream":true,"stream_options":7,"prompt":["x"]}`))
	f.Add([]byte(`{"model":"\u00e9\ud83d\ude00","stream":false}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var rw rewriter
		cr, err := rw.parse(body)
		if err != nil {
			return
		}
		if sum, _ := rw.digest(false); sum != "" && len(sum) != 64 {
			t.Fatalf("digest %q", sum)
		}
		for _, model := range []string{"backend-a", "", "backend-b"} {
			out := rw.render(body, cr, model)
			var p fastjson.Parser
			v, err := p.ParseBytes(out)
			if err != nil {
				t.Fatalf("render produced invalid JSON %q from %q: %v", out, body, err)
			}
			want := model
			if want == "" {
				want = cr.model
			}
			if got := string(v.GetStringBytes("model")); got != want && !(want == "" && v.Get("model") == nil) {
				if !sameSlice(out, body) || cr.model != want {
					t.Fatalf("model %q, want %q (body %q -> %q)", got, want, body, out)
				}
			}
			if cr.stream && !v.GetBool("stream_options", "include_usage") {
				t.Fatalf("stream without include_usage upstream: %q", out)
			}
		}
	})
}
