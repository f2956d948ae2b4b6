package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

// memSink keeps records in memory for assertions.
type memSink struct {
	mu   sync.Mutex
	recs []*recorder.Request
	ch   chan *recorder.Request
}

func newMemSink() *memSink { return &memSink{ch: make(chan *recorder.Request, 100000)} }

func (m *memSink) Submit(r *recorder.Request) bool {
	m.mu.Lock()
	m.recs = append(m.recs, r)
	m.mu.Unlock()
	m.ch <- r
	return true
}

// wait returns the next record, failing the test after a timeout.
func (m *memSink) wait(t testing.TB) *recorder.Request {
	t.Helper()
	select {
	case r := <-m.ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no record within 10s")
		return nil
	}
}

// startProxy serves a proxy over the given backends on a loopback port.
func startProxy(t testing.TB, mod func(*config.Config), backends ...config.Backend) (string, *Proxy, *memSink) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startProxyOn(t, ln, mod, backends...)
}

// startProxyOn is startProxy on a given listener.
func startProxyOn(t testing.TB, ln net.Listener, mod func(*config.Config), backends ...config.Backend) (string, *Proxy, *memSink) {
	t.Helper()
	return startProxyWith(t, ln, mod, nil, backends...)
}

// startProxyWith is startProxyOn with options changed by opt.
func startProxyWith(t testing.TB, ln net.Listener, mod func(*config.Config), opt func(*Options), backends ...config.Backend) (string, *Proxy, *memSink) {
	t.Helper()
	cfg := config.Default()
	cfg.Backends = backends
	if mod != nil {
		mod(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	sink := newMemSink()
	opts := Options{Config: cfg, Sink: sink, Run: "test"}
	if opt != nil {
		opt(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln) //nolint:errcheck
	t.Cleanup(func() {
		// short: tests with stalled shadows end by cutting them
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return "http://" + ln.Addr().String(), p, sink
}

// startSim runs a sim with a fixed clock so that two runs are byte-identical.
func startSim(t testing.TB, speedup float64, truth io.Writer) string {
	t.Helper()
	prof, _ := sim.BuiltinProfile("optimized")
	s, url, err := sim.Start(sim.Options{Profile: prof, Seed: 7, Speedup: speedup, Truth: truth,
		Created: func() int64 { return 1700000000 }}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return url
}

func post(t testing.TB, url, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// TestByteForByte runs with the streams relayed by event loops and by a
// goroutine each (loops off, or too few streams in flight for them); the
// client keeps its connection alive across the cases, so a body framed
// wrongly breaks the next response.
func TestByteForByte(t *testing.T) {
	simURL := startSim(t, 200, nil)
	for _, mode := range []struct {
		name       string
		loops, min int
	}{{"loops", 0, 0}, {"goroutines", -1, 0}, {"below event_loop_min_streams", 0, 2}} {
		t.Run(mode.name, func(t *testing.T) {
			px, p, sink := startProxy(t, func(c *config.Config) { c.Proxy.EventLoops, c.Proxy.EventLoopMinStreams = mode.loops, mode.min },
				config.Backend{Name: "sim", URL: simURL, Model: "Qwen/Qwen2.5-14B-Instruct"})
			testByteForByte(t, simURL, px, sink)
			if n, want := p.loopStreams.Load(), mode.loops == 0 && mode.min <= 1; (n > 0) != want {
				t.Fatalf("%d streams went through event loops with event_loops = %d, event_loop_min_streams = %d", n, mode.loops, mode.min)
			}
		})
	}
}

func testByteForByte(t *testing.T, simURL, px string, sink *memSink) {
	const model = `"model":"Qwen/Qwen2.5-14B-Instruct"`
	cases := []struct{ name, path, body string }{
		{"chat-stream", "/v1/chat/completions", `{` + model + `,"messages":[{"role":"user","content":"Shall I compare thee"}],"max_tokens":12,"stream":true,"ignore_eos":true}`},
		{"chat-stream-usage", "/v1/chat/completions", `{` + model + `,"messages":[{"role":"user","content":"to a summer's day"}],"max_tokens":9,"stream":true,"stream_options":{"include_usage":true}}`},
		{"chat-nonstream", "/v1/chat/completions", `{` + model + `,"messages":[{"role":"user","content":"hello"}],"max_tokens":5}`},
		{"completions-stream", "/v1/completions", `{` + model + `,"prompt":"Once upon","max_tokens":8,"stream":true}`},
		{"completions-stream-usage", "/v1/completions", `{` + model + `,"prompt":"a time","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}`},
		{"completions-nonstream", "/v1/completions", `{` + model + `,"prompt":"there was","max_tokens":6}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			presp, pbody := post(t, px+c.path, c.body, nil)
			id := presp.Header.Get(HeaderRequestID)
			if id == "" || presp.Header.Get(HeaderBackend) != "sim" {
				t.Fatalf("missing abproxy headers: %v", presp.Header)
			}
			// the same request straight to the sim, under the id the proxy sent upstream
			_, dbody := post(t, simURL+c.path, c.body, map[string]string{"X-Request-Id": id})
			if !bytes.Equal(pbody, dbody) {
				t.Fatalf("proxied bytes differ from direct bytes\nproxy:  %q\ndirect: %q", pbody, dbody)
			}
			if !bytes.Contains(pbody, []byte(id)) {
				t.Fatalf("backend did not see X-Request-Id %s", id)
			}
			rec := sink.wait(t)
			if rec.ID != id || rec.Status != 200 || rec.Error != "" {
				t.Fatalf("record = %+v", rec)
			}
			if rec.PromptTokens <= 0 || rec.CompletionTokens <= 0 || rec.TokensSource != "usage" {
				t.Fatalf("usage not recorded: %+v", rec)
			}
			if strings.Contains(c.name, "nonstream") {
				return
			}
			if bytes.Contains(pbody, []byte(`"choices":[]`)) != strings.Contains(c.name, "usage") {
				t.Fatalf("usage chunk present=%v for %s", !strings.Contains(c.name, "usage"), c.name)
			}
			if len(rec.ChunkNS) != rec.CompletionTokens {
				t.Fatalf("chunks %d != completion tokens %d", len(rec.ChunkNS), rec.CompletionTokens)
			}
			if !(rec.StartNS < rec.UpstreamNS && rec.UpstreamNS <= rec.FirstByteNS && rec.FirstByteNS <= rec.FirstTokenNS &&
				rec.FirstTokenNS == rec.ChunkNS[0] && rec.ChunkNS[len(rec.ChunkNS)-1] <= rec.EndNS) {
				t.Fatalf("timestamps out of order: %+v", rec)
			}
			if rec.BytesOut != int64(len(pbody)) {
				t.Fatalf("bytes_out %d, client got %d", rec.BytesOut, len(pbody))
			}
		})
	}
}

func TestModelRewrite(t *testing.T) {
	simURL := startSim(t, 200, nil)
	px, _, sink := startProxy(t, nil, config.Backend{Name: "sim", URL: simURL, Model: "Qwen/Qwen2.5-14B-Instruct"})
	resp, body := post(t, px+"/v1/chat/completions", `{"model":"whatever","messages":[{"role":"user","content":"x"}],"max_tokens":3}`, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if rec := sink.wait(t); rec.Model != "Qwen/Qwen2.5-14B-Instruct" {
		t.Fatalf("recorded model %q", rec.Model)
	}
}

// promptDigest is the hex SHA-256 a record keeps of a prompt's JSON.
func promptDigest(prompt string) string {
	h := sha256.Sum256([]byte(prompt))
	return hex.EncodeToString(h[:])
}

// The prompt's digest (and, with store_bodies, the prompt) are taken after
// the request has gone upstream: every record still gets them, whether the
// request succeeds or fails, streams or not.
func TestPromptDigest(t *testing.T) {
	simURL := startSim(t, 200, nil)
	const messages = `[{"role":"user","content":"héllo \"quoted\" ✓"}]`
	for _, store := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// the model is rewritten, so render changes the parsed body first
		px, _, sink := startProxyWith(t, ln, nil, func(o *Options) { o.StoreBodies = store },
			config.Backend{Name: "sim", URL: simURL, Model: "Qwen/Qwen2.5-14B-Instruct"})
		cases := []struct {
			name, body, prompt string
			hdr                map[string]string
			status             int
		}{
			{"stream", `{"model":"m","stream":true,"max_tokens":3,"messages":` + messages + `}`, messages, nil, 200},
			{"whole", `{"model":"m","max_tokens":3,"messages":` + messages + `}`, messages, nil, 200},
			{"completions", `{"model":"m","max_tokens":3,"prompt":"once upon"}`, `"once upon"`, nil, 200},
			{"unknown backend", `{"model":"m","messages":` + messages + `}`, messages, map[string]string{HeaderBackend: "nope"}, 400},
			{"no prompt", `{"model":"m","max_tokens":3}`, "", nil, 200},
		}
		for _, c := range cases {
			path := "/v1/chat/completions"
			if c.name == "completions" {
				path = "/v1/completions"
			}
			resp, body := post(t, px+path, c.body, c.hdr)
			if resp.StatusCode != c.status && c.name != "no prompt" {
				t.Fatalf("%s: status %d: %s", c.name, resp.StatusCode, body)
			}
			rec := sink.wait(t)
			want := ""
			if c.prompt != "" {
				want = promptDigest(c.prompt)
			}
			if rec.PromptSHA256 != want {
				t.Errorf("store=%v %s: prompt digest %q, want %q", store, c.name, rec.PromptSHA256, want)
			}
			if wantPrompt := map[bool]string{true: c.prompt}[store]; rec.Prompt != wantPrompt {
				t.Errorf("store=%v %s: prompt %q, want %q", store, c.name, rec.Prompt, wantPrompt)
			}
		}
	}
}

// errorBodyOf decodes an OpenAI error body.
func errorBodyOf(t *testing.T, b []byte) openAIErrorBody {
	t.Helper()
	var e openAIError
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error body: %q (%v)", b, err)
	}
	return e.Error
}

func TestBadInput(t *testing.T) {
	simURL := startSim(t, 200, nil)
	dead := deadAddr(t)
	px, _, sink := startProxy(t, func(c *config.Config) { c.Proxy.MaxBodyBytes = 1024 },
		config.Backend{Name: "sim", URL: simURL},
		config.Backend{Name: "dead", URL: "http://" + dead})
	chat := `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":3}`
	cases := []struct {
		name, body string
		hdr        map[string]string
		status     int
		class      string
	}{
		{"invalid json", `{"model":`, nil, 400, ErrBadRequest},
		{"not an object", `[1]`, nil, 400, ErrBadRequest},
		{"too large", `{"x":"` + strings.Repeat("a", 2000) + `"}`, nil, 413, ErrBodyTooLarge},
		{"unknown backend", chat, map[string]string{HeaderBackend: "nope"}, 400, ErrUnknownBackend},
		{"unreachable", chat, map[string]string{HeaderBackend: "dead"}, 502, ErrUpstreamUnreachable},
		{"backend error status", `{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}`, nil, 404, ErrUpstreamStatus},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := post(t, px+"/v1/chat/completions", c.body, c.hdr)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			e := errorBodyOf(t, body)
			rec := sink.wait(t)
			if rec.Status != c.status || rec.Error != c.class {
				t.Fatalf("record status %d error %q, want %d %q (%s)", rec.Status, rec.Error, c.status, c.class, e.Message)
			}
			if rec.ID != resp.Header.Get(HeaderRequestID) || rec.EndNS < rec.StartNS {
				t.Fatalf("record %+v", rec)
			}
		})
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// faultBackend is a raw HTTP/1.1 server that misbehaves on purpose.
type faultBackend struct {
	ln     net.Listener
	closed chan struct{} // a connection was closed by the peer
}

const sseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

func chunk(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }

const contentEvent = `data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}` + "\n\n"

func startFault(t *testing.T, serve func(c net.Conn, fb *faultBackend)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb := &faultBackend{ln: ln, closed: make(chan struct{}, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					c.Close()
					return
				}
				serve(c, fb)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return "http://" + ln.Addr().String()
}

func TestStreamFaults(t *testing.T) { forRelays(t, testStreamFaults) }

func testStreamFaults(t *testing.T, r relay) {
	stall := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead+chunk(contentEvent)+chunk(contentEvent))
		time.Sleep(3 * time.Second)
		c.Close()
	})
	reset := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead+chunk(contentEvent)+chunk(contentEvent)+chunk(contentEvent))
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	px, p, sink := startProxy(t, r.with(func(c *config.Config) { c.Proxy.IdleTimeout.Duration = 300 * time.Millisecond }),
		config.Backend{Name: "stall", URL: stall}, config.Backend{Name: "reset", URL: reset})
	defer r.check(t, p)
	stream := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`

	t.Run("idle timeout", func(t *testing.T) {
		resp, body := post(t, px+"/v1/chat/completions", stream, map[string]string{HeaderBackend: "stall"})
		if resp.StatusCode != 200 || strings.Count(string(body), `"content":"tok"`) != 2 {
			t.Fatalf("client got %d %q", resp.StatusCode, body)
		}
		if !strings.Contains(string(body), `"type":"timeout"`) {
			t.Fatalf("stream did not end with an error event: %q", body)
		}
		rec := sink.wait(t)
		if rec.Error != ErrTimeout || len(rec.ChunkNS) != 2 || rec.FirstTokenNS == 0 {
			t.Fatalf("record %+v", rec)
		}
		if d := time.Duration(rec.EndNS - rec.ChunkNS[1]); d < 300*time.Millisecond || d > 2*time.Second {
			t.Fatalf("timed out after %v, want about 300ms", d)
		}
	})
	t.Run("upstream reset", func(t *testing.T) {
		_, body := post(t, px+"/v1/chat/completions", stream, map[string]string{HeaderBackend: "reset"})
		if strings.Count(string(body), `"content":"tok"`) != 3 || !strings.Contains(string(body), ErrUpstreamReset) {
			t.Fatalf("client got %q", body)
		}
		rec := sink.wait(t)
		if rec.Error != ErrUpstreamReset || len(rec.ChunkNS) != 3 || rec.CompletionTokens != 3 || rec.TokensSource != "chunks" {
			t.Fatalf("record %+v", rec)
		}
	})
}

// TestEndIsDone: a stream ends when data: [DONE] arrives (DESIGN.md),
// not when the closing chunk a server writes after it does. A busy server
// (or the sim's HTTP library) can send that chunk milliseconds later, and
// a client such as bench, which stops at [DONE], never waits for it.
func TestEndIsDone(t *testing.T) { forRelays(t, testEndIsDone) }

func testEndIsDone(t *testing.T, r relay) {
	const gap = 300 * time.Millisecond
	slowClose := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead+chunk(contentEvent)+chunk("data: [DONE]\n\n"))
		time.Sleep(gap)
		io.WriteString(c, "0\r\n\r\n")
		time.Sleep(time.Second) // the proxy reads the body's end, not EOF
		c.Close()
	})
	px, p, sink := startProxy(t, r.mod, config.Backend{Name: "slow-close", URL: slowClose})
	defer r.check(t, p)
	start := time.Now()
	resp, body := post(t, px+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`, nil)
	took := time.Since(start)
	if resp.StatusCode != 200 || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("client got %d %q", resp.StatusCode, body)
	}
	if took < gap {
		t.Fatalf("the response ended after %v, before the backend closed its body", took)
	}
	rec := sink.wait(t)
	if rec.Error != "" || len(rec.ChunkNS) != 1 {
		t.Fatalf("record %+v", rec)
	}
	if d := time.Duration(rec.EndNS - rec.ChunkNS[0]); d < 0 || d > gap/2 {
		t.Fatalf("end_ns is %v after the last chunk; want the arrival of [DONE], %v before the closing chunk", d, gap)
	}
}

func TestClientCancelClosesUpstream(t *testing.T) { forRelays(t, testClientCancelClosesUpstream) }

func testClientCancelClosesUpstream(t *testing.T, r relay) {
	upClosed := make(chan time.Duration, 1)
	slow := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, sseHead)
		start := time.Now()
		for i := 0; i < 1000; i++ {
			if _, err := io.WriteString(c, chunk(contentEvent)); err != nil {
				upClosed <- time.Since(start)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		upClosed <- -1
	})
	px, p, sink := startProxy(t, r.mod, config.Backend{Name: "slow", URL: slow})
	defer r.check(t, p)
	req, _ := http.NewRequest("POST", px+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[],"stream":true}`))
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if _, err := io.ReadAtLeast(resp.Body, buf, 50); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	rec := sink.wait(t)
	if rec.Error != ErrClientCancelled || len(rec.ChunkNS) == 0 {
		t.Fatalf("record %+v", rec)
	}
	select {
	case d := <-upClosed:
		if d < 0 {
			t.Fatal("upstream connection was never closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("upstream still being read 5s after the client left")
	}
}

func TestCredentials(t *testing.T) {
	auth := make(chan string, 2)
	// a backend that reports the Authorization header it received
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				auth <- r.Header.Get("Authorization")
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
			}()
		}
	}()
	url := "http://" + ln.Addr().String()
	px, _, _ := startProxy(t, nil, config.Backend{Name: "pass", URL: url}, config.Backend{Name: "own", URL: url, APIKey: "sk-backend"})
	body := `{"model":"m","messages":[]}`
	post(t, px+"/v1/chat/completions", body, map[string]string{"Authorization": "Bearer sk-client", HeaderBackend: "pass"})
	if got := <-auth; got != "Bearer sk-client" {
		t.Fatalf("pass-through Authorization = %q", got)
	}
	post(t, px+"/v1/chat/completions", body, map[string]string{"Authorization": "Bearer sk-client", HeaderBackend: "own"})
	if got := <-auth; got != "Bearer sk-backend" {
		t.Fatalf("backend key not used: %q", got)
	}
}

// TestNoBodyStatuses checks that a 204 from the backend (no body, no
// Content-Length) is answered at once and the connection reused, instead
// of waiting for a body that never comes.
func TestNoBodyStatuses(t *testing.T) {
	conns := make(chan struct{}, 10)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- struct{}{}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
				}
			}()
		}
	}()
	px, _, sink := startProxy(t, func(c *config.Config) { c.Proxy.IdleTimeout.Duration = 5 * time.Second },
		config.Backend{Name: "b", URL: "http://" + ln.Addr().String()})
	for i := 0; i < 3; i++ {
		start := time.Now()
		req, _ := http.NewRequest("DELETE", px+"/v1/files/x", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 || time.Since(start) > time.Second {
			t.Fatalf("status %d after %v", resp.StatusCode, time.Since(start))
		}
		if r := sink.wait(t); r.Status != 204 || r.Error != "" {
			t.Fatalf("record %+v", r)
		}
	}
	if len(conns) != 1 {
		t.Fatalf("%d upstream connections for 3 requests, want 1 (reused)", len(conns))
	}
}
