package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/recorder"
	"github.com/abproxy/abproxy/sim"
)

func startSimSeed(t testing.TB, seed int64) string {
	t.Helper()
	prof, _ := sim.BuiltinProfile("optimized")
	s, url, err := sim.Start(sim.Options{Profile: prof, Seed: seed, Speedup: 200}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return url
}

func mirrorRoute(primary string, shadows ...string) func(*config.Config) {
	return func(c *config.Config) {
		c.Route.Mode = "mirror"
		c.Route.Primary = primary
		c.Route.Shadows = shadows
	}
}

// collect waits for n records and indexes them by backend.
func collect(t *testing.T, sink *memSink, n int) map[string]*recorder.Request {
	t.Helper()
	out := map[string]*recorder.Request{}
	for i := 0; i < n; i++ {
		r := sink.wait(t)
		out[r.Backend] = r
	}
	return out
}

func TestMirrorPairsAndAgreement(t *testing.T) {
	a, same, other := startSimSeed(t, 1), startSimSeed(t, 1), startSimSeed(t, 2)
	px, _, sink := startProxy(t, mirrorRoute("a", "same", "other"),
		config.Backend{Name: "a", URL: a}, config.Backend{Name: "same", URL: same}, config.Backend{Name: "other", URL: other})
	for _, stream := range []bool{true, false} {
		body := `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"Shall I compare thee"}],"max_tokens":20,"ignore_eos":true,"stream":` + map[bool]string{true: "true", false: "false"}[stream] + `}`
		resp, cbody := post(t, px+"/v1/chat/completions", body, nil)
		if resp.StatusCode != 200 || resp.Header.Get(HeaderBackend) != "a" {
			t.Fatalf("client got %d from %q", resp.StatusCode, resp.Header.Get(HeaderBackend))
		}
		if stream && strings.Contains(string(cbody), "chatcmpl-"+resp.Header.Get(HeaderRequestID)) == false {
			t.Fatalf("client did not get the primary's stream")
		}
		recs := collect(t, sink, 3)
		p, s1, s2 := recs["a"], recs["same"], recs["other"]
		if p == nil || s1 == nil || s2 == nil {
			t.Fatalf("records: %v", recs)
		}
		if p.Role != recorder.RolePrimary || s1.Role != recorder.RoleShadow || s2.Role != recorder.RoleShadow {
			t.Fatalf("roles %s %s %s", p.Role, s1.Role, s2.Role)
		}
		if p.PairID != p.ID || s1.PairID != p.ID || s2.PairID != p.ID || s1.ID == p.ID || s1.ID == s2.ID {
			t.Fatalf("pair ids: primary %s/%s, shadows %s/%s %s/%s", p.ID, p.PairID, s1.ID, s1.PairID, s2.ID, s2.PairID)
		}
		if want := promptDigest(`[{"role":"user","content":"Shall I compare thee"}]`); p.PromptSHA256 != want || s1.PromptSHA256 != want || s2.PromptSHA256 != want {
			t.Fatalf("prompt digests %q %q %q, want %q on all three", p.PromptSHA256, s1.PromptSHA256, s2.PromptSHA256, want)
		}
		if s1.Error != "" || s2.Error != "" || s1.CompletionTokens != 20 {
			t.Fatalf("shadow records %+v %+v", s1, s2)
		}
		if stream && (len(s1.ChunkNS) != 20 || s1.FirstTokenNS == 0) {
			t.Fatalf("shadow stream not timed: %+v", s1)
		}
		if p.Agreement != nil {
			t.Fatal("agreement belongs on the shadow record")
		}
		g1, g2 := s1.Agreement, s2.Agreement
		if g1 == nil || !g1.Identical || g1.PrefixChars == 0 {
			t.Fatalf("same-seed shadow agreement = %+v", g1)
		}
		if p.OutputSHA256 != s1.OutputSHA256 {
			t.Fatal("identical outputs with different hashes")
		}
		if g2 == nil || g2.Identical || g2.PrefixChars >= g1.PrefixChars {
			t.Fatalf("different-seed shadow agreement = %+v (same-seed %+v)", g2, g1)
		}
		if stream && (g1.PrefixTokens != 20 || g2.PrefixTokens < 0 || g2.PrefixTokens >= 20) {
			t.Fatalf("token prefixes %d / %d", g1.PrefixTokens, g2.PrefixTokens)
		}
		if !stream && g1.PrefixTokens != -1 {
			t.Fatalf("non-streamed prefix tokens should be unknown, got %d", g1.PrefixTokens)
		}
	}
	// opted out: no shadow
	post(t, px+"/v1/chat/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":2}`, map[string]string{HeaderNoMirror: "1"})
	if r := sink.wait(t); r.PairID != "" || r.Backend != "a" {
		t.Fatalf("opted-out request was mirrored: %+v", r)
	}
	select {
	case r := <-sink.ch:
		t.Fatalf("unexpected extra record %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestCompareOutputs(t *testing.T) {
	g := compareOutputs([]byte("héllo world"), []int32{3, 6, 12}, []byte("héllo there"), []int32{3, 6, 12})
	if g.Identical || g.PrefixChars != 6 || g.PrefixTokens != 2 {
		t.Fatalf("%+v", g)
	}
	// "é" and "è" share their first byte: it must not count as a character
	g = compareOutputs([]byte("é"), nil, []byte("è"), nil)
	if g.PrefixChars != 0 || g.PrefixTokens != -1 {
		t.Fatalf("%+v", g)
	}
	g = compareOutputs([]byte("same"), []int32{2, 4}, []byte("same"), []int32{2, 4})
	if !g.Identical || g.PrefixChars != 4 || g.PrefixTokens != 2 {
		t.Fatalf("%+v", g)
	}
	// same text, different chunking: tokens differ after the first
	g = compareOutputs([]byte("abcd"), []int32{2, 4}, []byte("abcd"), []int32{1, 4})
	if !g.Identical || g.PrefixTokens != 0 {
		t.Fatalf("%+v", g)
	}
}

// stallBackend accepts requests and never answers them.
func stallBackend(t testing.TB) (string, func() int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1024)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c: // hold it open, say nothing
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for len(accepted) > 0 {
			(<-accepted).Close()
		}
	})
	return "http://" + ln.Addr().String(), func() int { return len(accepted) }
}

// TestStalledShadowDoesNotSlowTheClient sends sequential requests on one
// keep-alive connection while the shadow never answers: every response
// must arrive as fast as without mirroring, on the same connection.
func TestStalledShadowDoesNotSlowTheClient(t *testing.T) {
	primary := startSimSeed(t, 1)
	stall, accepted := stallBackend(t)
	pxOff, _, sinkOff := startProxy(t, nil, config.Backend{Name: "a", URL: primary}, config.Backend{Name: "s", URL: stall})
	pxOn, p, sink := startProxy(t, func(c *config.Config) {
		mirrorRoute("a", "s")(c)
		c.Route.ShadowTimeout.Duration = time.Minute
	}, config.Backend{Name: "a", URL: primary}, config.Backend{Name: "s", URL: stall})
	const n = 40
	measure := func(px string, sink *memSink) (p50 time.Duration, reused int) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		var d []time.Duration
		for i := 0; i < n; i++ {
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
				if info.Reused {
					reused++
				}
			}}
			req, _ := http.NewRequest("POST", px+"/v1/chat/completions", strings.NewReader(
				`{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"hi `+strings.Repeat("y", i)+`"}],"max_tokens":16,"ignore_eos":true,"stream":true}`))
			req = req.WithContext(httptrace.WithClientTrace(context.Background(), trace))
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			d = append(d, time.Since(start))
			if resp.StatusCode != 200 || !strings.Contains(string(b), "[DONE]") {
				t.Fatalf("client got %d %q", resp.StatusCode, b)
			}
			if r := sink.wait(t); r.Backend != "a" || r.Error != "" {
				t.Fatalf("primary record %+v", r)
			}
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2], reused
	}
	off, _ := measure(pxOff, sinkOff)
	on, reused := measure(pxOn, sink)
	t.Logf("client E2E p50: %v without mirroring, %v with a stalled shadow", off, on)
	if reused != n-1 {
		t.Errorf("client connection reused %d times of %d", reused, n-1)
	}
	if on > off+off/2+5*time.Millisecond {
		t.Errorf("a stalled shadow slowed the client: p50 %v vs %v", on, off)
	}
	if st := p.Stats(); st.ShadowInflight != n || accepted() == 0 {
		t.Errorf("shadows in flight %d (want %d), backend accepted %d", st.ShadowInflight, n, accepted())
	}
}

func TestShadowFailuresAreRecordedNotSeen(t *testing.T) {
	primary := startSimSeed(t, 1)
	fail500 := startFault(t, func(c net.Conn, _ *faultBackend) {
		io.WriteString(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 68\r\n\r\n"+
			`{"error":{"message":"boom","type":"InternalServerError","code":500}}`)
		c.Close()
	})
	dead := "http://" + deadAddr(t)
	px, _, sink := startProxy(t, mirrorRoute("a", "e500", "dead"),
		config.Backend{Name: "a", URL: primary}, config.Backend{Name: "e500", URL: fail500}, config.Backend{Name: "dead", URL: dead})
	resp, body := post(t, px+"/v1/chat/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":8,"stream":true}`, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "[DONE]") {
		t.Fatalf("client got %d %q", resp.StatusCode, body)
	}
	recs := collect(t, sink, 3)
	if r := recs["a"]; r.Error != "" {
		t.Fatalf("primary %+v", r)
	}
	if r := recs["e500"]; r.Status != 500 || r.Error != ErrUpstreamStatus || r.Agreement != nil {
		t.Fatalf("500 shadow %+v", r)
	}
	if r := recs["dead"]; r.Error != ErrUpstreamUnreachable || r.Status != 502 {
		t.Fatalf("dead shadow %+v", r)
	}
}

func TestShadowBoundSkipsExactly(t *testing.T) {
	primary := startSimSeed(t, 1)
	stall, _ := stallBackend(t)
	px, p, sink := startProxy(t, func(c *config.Config) {
		mirrorRoute("a", "s")(c)
		c.Route.MaxShadowInflight = 2
	}, config.Backend{Name: "a", URL: primary}, config.Backend{Name: "s", URL: stall})
	for i := 0; i < 5; i++ {
		post(t, px+"/v1/chat/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":2}`, nil)
		r := sink.wait(t)
		wantSkipped := 0
		if i >= 2 {
			wantSkipped = 1
		}
		if r.ShadowsSkipped != wantSkipped || (wantSkipped == 0) != (r.PairID != "") {
			t.Fatalf("request %d: skipped %d, pair %q", i, r.ShadowsSkipped, r.PairID)
		}
		if got, want := p.Stats().ShadowSkipped, uint64(max(0, i-1)); got != want {
			t.Fatalf("after request %d: skip counter %d, want %d", i, got, want)
		}
	}
}

func TestSplitAndStickyThroughProxy(t *testing.T) {
	a, b := startSimSeed(t, 1), startSimSeed(t, 1)
	px, _, sink := startProxy(t, func(c *config.Config) {
		c.Route.Weights = map[string]float64{"a": 50, "b": 50}
		c.Route.StickyHeader = "X-User-Id"
	}, config.Backend{Name: "a", URL: a}, config.Backend{Name: "b", URL: b})
	seen := map[string]string{}
	counts := map[string]int{}
	for i := 0; i < 60; i++ {
		user := "user" + string(rune('A'+i%12))
		resp, _ := post(t, px+"/v1/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","prompt":"x","max_tokens":2}`, map[string]string{"X-User-Id": user})
		got := resp.Header.Get(HeaderBackend)
		if prev, ok := seen[user]; ok && prev != got {
			t.Fatalf("%s moved from %s to %s", user, prev, got)
		}
		seen[user] = got
		counts[got]++
		sink.wait(t)
	}
	if counts["a"] == 0 || counts["b"] == 0 {
		t.Fatalf("12 users all landed on one arm: %v", counts)
	}
	// the OpenAI "user" field is the key when the header is absent
	first, _ := post(t, px+"/v1/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","prompt":"x","max_tokens":2,"user":"u-42"}`, nil)
	for i := 0; i < 10; i++ {
		r, _ := post(t, px+"/v1/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","prompt":"y","max_tokens":2,"user":"u-42"}`, nil)
		if r.Header.Get(HeaderBackend) != first.Header.Get(HeaderBackend) {
			t.Fatal(`the "user" field did not keep the user on one arm`)
		}
	}
}
