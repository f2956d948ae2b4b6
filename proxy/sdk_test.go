package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/abproxy/abproxy/config"
	"github.com/abproxy/abproxy/internal/testutil"
	"github.com/abproxy/abproxy/sim"
)

// TestOpenAISDK drives the proxy with the official OpenAI Go SDK, the way
// an application in production would.
func TestOpenAISDK(t *testing.T) {
	simURL := startSim(t, 200, nil)
	px, _, sink := startProxy(t, nil, config.Backend{Name: "sim", URL: simURL, Model: "Qwen/Qwen2.5-14B-Instruct"})
	client := openai.NewClient(option.WithBaseURL(px+"/v1"), option.WithAPIKey("sk-test"), option.WithMaxRetries(0))
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{
		Model:     "any-name-the-proxy-rewrites",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Shall I compare thee to a summer's day?")},
		MaxTokens: openai.Int(16),
	}

	t.Run("stream", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(ctx, params)
		var acc openai.ChatCompletionAccumulator
		chunks := 0
		for stream.Next() {
			c := stream.Current()
			acc.AddChunk(c)
			if len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
				chunks++
			}
			if len(c.Choices) == 0 {
				t.Fatalf("client got a usage-only chunk it did not ask for")
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if acc.Choices[0].Message.Content == "" || chunks == 0 {
			t.Fatalf("empty answer")
		}
		rec := sink.wait(t)
		if len(rec.ChunkNS) != chunks || rec.CompletionTokens != chunks || rec.Error != "" {
			t.Fatalf("record %+v, client saw %d chunks", rec, chunks)
		}
	})
	t.Run("stream with usage", func(t *testing.T) {
		p := params
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := client.Chat.Completions.NewStreaming(ctx, p)
		var usage int64
		for stream.Next() {
			if u := stream.Current().Usage; u.CompletionTokens > 0 {
				usage = u.CompletionTokens
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		rec := sink.wait(t)
		if usage == 0 || int64(rec.CompletionTokens) != usage {
			t.Fatalf("client usage %d, record %d", usage, rec.CompletionTokens)
		}
	})
	t.Run("non-stream", func(t *testing.T) {
		resp, err := client.Chat.Completions.New(ctx, params)
		if err != nil {
			t.Fatal(err)
		}
		rec := sink.wait(t)
		if resp.Choices[0].Message.Content == "" || int64(rec.CompletionTokens) != resp.Usage.CompletionTokens ||
			int64(rec.PromptTokens) != resp.Usage.PromptTokens {
			t.Fatalf("resp usage %+v, record %+v", resp.Usage, rec)
		}
	})
	t.Run("error surfaces", func(t *testing.T) {
		_, err := client.Chat.Completions.New(ctx, params, option.WithHeader(HeaderBackend, "nope"))
		var apiErr *openai.Error
		if err == nil || !asError(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "unknown backend") {
			t.Fatalf("err = %v", err)
		}
		sink.wait(t)
	})
}

func asError(err error, target **openai.Error) bool {
	e, ok := err.(*openai.Error)
	if ok {
		*target = e
	}
	return ok
}

// TestAccuracyUnderLoad checks the proxy's first-token and end times
// against the sim's own write times at 256 concurrent streams. Each time
// must be within 2 ms of the span of the write that sent its bytes, and
// upstream_ns no later than the sim's read of the request. The
// loopback "network" itself can deliver late when the machine is
// saturated (the kernel sends a written segment later), so a failed round
// is measured again, up to three rounds.
func TestAccuracyUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("timing accuracy under load: skipped with -short")
	}
	if testutil.Race {
		t.Skip("timing accuracy under load: the race detector slows the proxy several times over")
	}
	for round := 1; round <= 3; round++ {
		worst := accuracyRound(t)
		if worst <= 2 {
			return
		}
		t.Logf("round %d: a time %.3f ms outside the write span is over the 2 ms limit", round, worst)
	}
	t.Error("in three rounds, some recorded time was more than 2 ms outside the sim's write span")
}

// accuracyRound runs 256 concurrent streams and returns the largest
// distance in ms of a first-token or end time from the sim's write span.
func accuracyRound(t *testing.T) float64 {
	var truth testutil.SyncBuffer
	simURL := startSim(t, 1, &truth)
	px, _, sink := startProxy(t, nil, config.Backend{Name: "sim", URL: simURL})
	const streams = 256
	tr := &http.Transport{MaxIdleConnsPerHost: streams, MaxConnsPerHost: streams}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"prompt ` + strings.Repeat("x ", i) + `"}],"max_tokens":24,"ignore_eos":true,"stream":true}`
			resp, err := client.Post(px+"/v1/chat/completions", "application/json", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs := map[string][3]int64{}
	for i := 0; i < streams; i++ {
		r := sink.wait(t)
		if r.Error != "" || len(r.ChunkNS) != 24 {
			t.Fatalf("record %+v", r)
		}
		if r.UpstreamNS < r.StartNS || r.FirstByteNS < r.UpstreamNS {
			t.Fatalf("record times out of order: start %d upstream %d first byte %d", r.StartNS, r.UpstreamNS, r.FirstByteNS)
		}
		recs[r.ID] = [3]int64{r.FirstTokenNS, r.EndNS, r.UpstreamNS}
	}
	lines := readTruth(t, &truth, streams)
	// The sim knows only that the kernel took its bytes between the start
	// and the return of a write; a sim thread held up inside the write (a
	// GC pause, a full send buffer, the OS running something else) widens
	// that span, and the proxy's time is then checked against the span.
	var dFirst, dEnd, spanFirst, spanEnd, offFirst, offEnd, upToRecv []float64
	for _, l := range lines {
		r, ok := recs[l.RequestID]
		if !ok {
			t.Fatalf("truth line for unknown request %s", l.RequestID)
		}
		if l.FirstContentDoneNS == 0 || l.EndDoneNS == 0 {
			t.Fatalf("truth line without write returns: %+v", l)
		}
		// upstream_ns is when the request left: the sim cannot have read
		// it before (stamped when the write returned, it often came after)
		if r[2] > l.ReceivedNS {
			t.Errorf("request %s: upstream_ns %.3f ms after the sim had read it", l.RequestID, float64(r[2]-l.ReceivedNS)/1e6)
		}
		upToRecv = append(upToRecv, float64(l.ReceivedNS-r[2])/1e6)
		dFirst = append(dFirst, float64(r[0]-l.FirstContentNS)/1e6)
		dEnd = append(dEnd, float64(r[1]-l.EndNS)/1e6)
		spanFirst = append(spanFirst, float64(l.FirstContentDoneNS-l.FirstContentNS)/1e6)
		spanEnd = append(spanEnd, float64(l.EndDoneNS-l.EndNS)/1e6)
		offFirst = append(offFirst, offSpan(r[0], l.FirstContentNS, l.FirstContentDoneNS))
		offEnd = append(offEnd, offSpan(r[1], l.EndNS, l.EndDoneNS))
	}
	sort.Float64s(upToRecv)
	t.Logf("upstream_ns to the sim's read of the request: p50 %.3f, max %.3f ms", upToRecv[len(upToRecv)/2], upToRecv[len(upToRecv)-1])
	worst := 0.0
	for _, m := range []struct {
		name         string
		d, span, off []float64
	}{{"first token", dFirst, spanFirst, offFirst}, {"end", dEnd, spanEnd, offEnd}} {
		for _, d := range [][]float64{m.d, m.span, m.off} {
			sort.Float64s(d)
		}
		q := func(d []float64) string {
			return fmt.Sprintf("min %.3f, p50 %.3f, p99 %.3f, max %.3f ms", d[0], d[len(d)/2], d[len(d)*99/100], d[len(d)-1])
		}
		t.Logf("%s over %d streams: proxy - sim write start: %s; sim write span: %s; outside the span by: %s",
			m.name, len(m.d), q(m.d), q(m.span), q(m.off))
		worst = math.Max(worst, math.Max(math.Abs(m.off[0]), math.Abs(m.off[len(m.off)-1])))
	}
	return worst
}

// TestUpstreamBeforeBackendRead: upstream_ns is when the request left, so
// the backend cannot have read the request before it, one request at a
// time as under load. Stamped when the write returned instead, it came
// after the sim's read for 26-30 of the 200 requests on a 2-vCPU VM: the
// woken sim ran first.
func TestUpstreamBeforeBackendRead(t *testing.T) {
	var truth testutil.SyncBuffer
	simURL := startSim(t, 200, &truth)
	px, _, sink := startProxy(t, nil, config.Backend{Name: "sim", URL: simURL})
	const n = 200
	up := map[string]int64{}
	for i := 0; i < n; i++ {
		resp, body := post(t, px+"/v1/chat/completions", `{"model":"Qwen/Qwen2.5-14B-Instruct","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"stream":true}`, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		r := sink.wait(t)
		up[r.ID] = r.UpstreamNS
	}
	late := 0
	for _, l := range readTruth(t, &truth, n) {
		u, ok := up[l.RequestID]
		if !ok {
			t.Fatalf("truth line for unknown request %s", l.RequestID)
		}
		if u == 0 || u > l.ReceivedNS {
			late++
		}
	}
	if late > 0 {
		t.Errorf("upstream_ns after the sim's read of the request (or missing) for %d of %d requests", late, n)
	}
}

// readTruth waits up to 5 s for the sim's truth to hold n lines (the sim
// writes a request's line when it ends) and returns them.
func readTruth(t *testing.T, truth *testutil.SyncBuffer, n int) []sim.TruthRecord {
	t.Helper()
	var lines []sim.TruthRecord
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines = lines[:0]
		sc := bufio.NewScanner(bytes.NewReader(truth.Bytes()))
		for sc.Scan() {
			var l sim.TruthRecord
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatal(err)
			}
			lines = append(lines, l)
		}
		if len(lines) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(lines) != n {
		t.Fatalf("truth has %d lines, want %d", len(lines), n)
	}
	return lines
}

// offSpan is how far t (ns) lies outside [start, done], in ms: negative
// before, positive after, 0 inside.
func offSpan(t, start, done int64) float64 {
	switch {
	case t < start:
		return float64(t-start) / 1e6
	case t > done:
		return float64(t-done) / 1e6
	}
	return 0
}
