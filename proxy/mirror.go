package proxy

import (
	"bytes"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/abproxy/abproxy/recorder"
)

// Mirroring: the primary serves the client; each shadow gets the same
// request on its own goroutine and connection, started right after the
// primary's request has been written (so that its dial and write do not
// delay the primary), and its response is read to the end, timed like the
// primary's, and discarded.
// Nothing on the primary's path waits for a shadow: the shadow's record is
// completed by whichever of the two finishes last.

// pair joins a primary and its shadows to compare their outputs.
type pair struct {
	mu          sync.Mutex
	primaryDone bool
	primaryOK   bool
	text        []byte  // the primary's output
	ends        []int32 // its chunk boundaries
	waiting     []*shadowResult
	submit      func(*recorder.Request)
}

type shadowResult struct {
	rec  *recorder.Request
	ok   bool
	text []byte
	ends []int32
}

// primaryFinished stores the primary's output and completes the records
// of shadows that finished first.
func (pr *pair) primaryFinished(ok bool, text []byte, ends []int32) {
	pr.mu.Lock()
	pr.primaryDone, pr.primaryOK = true, ok
	pr.text = append([]byte(nil), text...)
	pr.ends = append([]int32(nil), ends...)
	waiting := pr.waiting
	pr.waiting = nil
	pr.mu.Unlock()
	for _, s := range waiting {
		pr.complete(s)
	}
}

// shadowFinished completes the shadow's record now if the primary is done,
// else leaves it for primaryFinished.
func (pr *pair) shadowFinished(s *shadowResult) {
	pr.mu.Lock()
	if !pr.primaryDone {
		s.text = append([]byte(nil), s.text...)
		s.ends = append([]int32(nil), s.ends...)
		pr.waiting = append(pr.waiting, s)
		pr.mu.Unlock()
		return
	}
	pr.mu.Unlock()
	pr.complete(s)
}

func (pr *pair) complete(s *shadowResult) {
	if pr.primaryOK && s.ok {
		a := compareOutputs(pr.text, pr.ends, s.text, s.ends)
		s.rec.Agreement = &a
	}
	pr.submit(s.rec)
}

// compareOutputs measures how far two outputs agree: identical or not,
// the common prefix in characters, and in tokens (leading chunks with the
// same text; -1 when either side has no chunk boundaries).
func compareOutputs(a []byte, aEnds []int32, b []byte, bEnds []int32) recorder.Agreement {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	// back off to a character boundary so a shared first byte of two
	// different characters does not count
	for n > 0 && n < len(a) && !utf8.RuneStart(a[n]) {
		n--
	}
	g := recorder.Agreement{Identical: bytes.Equal(a, b), PrefixChars: utf8.RuneCount(a[:n]), PrefixTokens: -1}
	if len(aEnds) > 0 && len(bEnds) > 0 {
		k := 0
		for k < len(aEnds) && k < len(bEnds) && aEnds[k] == bEnds[k] && int(aEnds[k]) <= n {
			k++
		}
		g.PrefixTokens = k
	}
	return g
}

// startShadows sends copies of the request to the shadows, skipping (and
// counting) each copy that would exceed max_shadow_inflight. It returns
// the pair the primary must report to, or nil when no copy was sent.
func (p *Proxy) startShadows(ctx *fasthttp.RequestCtx, rec *recorder.Request, rw *rewriter, cr clientRequest, shadows []int, limit int) *pair {
	var pr *pair
	for _, si := range shadows {
		if p.shadowInflight.Add(1) > int64(limit) {
			p.shadowInflight.Add(-1)
			p.shadowSkipped.Add(1)
			rec.ShadowsSkipped++
			continue
		}
		up := p.upstreams[si]
		if pr == nil {
			pr = &pair{submit: p.finish}
			rec.PairID = rec.ID
		}
		// the client's request buffers are reused once its response is
		// done, which may be before the shadow's: copy what the shadow needs
		body := append([]byte(nil), rw.render(ctx.Request.Body(), cr, up.model)...)
		req := fasthttp.AcquireRequest()
		ctx.Request.Header.CopyTo(&req.Header)
		srec := &recorder.Request{
			ID: p.ids.Next(), Run: rec.Run, Backend: up.name, Role: recorder.RoleShadow, PairID: rec.ID,
			Endpoint: rec.Endpoint, Model: cmpOr(up.model, cr.model), Stream: cr.stream,
			PromptSHA256: rec.PromptSHA256, BytesIn: int64(len(body)), StartNS: now(),
			PromptTokens: -1, CompletionTokens: -1,
		}
		p.inflight.Add(1)
		p.inflightN.Add(1)
		go p.runShadow(pr, srec, up, req, body)
	}
	return pr
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// runShadow performs one shadow request to its end.
func (p *Proxy) runShadow(pr *pair, rec *recorder.Request, up *upstream, req *fasthttp.Request, body []byte) {
	defer p.shadowInflight.Add(-1)
	defer fasthttp.ReleaseRequest(req)
	x := &exchange{p: p, rec: rec, up: up, pair: pr}
	x.tap = p.taps.Get().(*tap)
	x.tap.reset(true)
	until := time.Now().Add(p.cfg.Route.ShadowTimeout.Duration).UnixNano()
	var h fasthttp.ResponseHeader
	c, err := p.roundTrip(req, req.Header.RequestURI(), rec, up, body, true, &h, until, nil)
	if err != nil {
		x.roundTripError(err)
		x.done()
		return
	}
	rec.Status = h.StatusCode()
	if rec.Status >= 400 {
		rec.Error = ErrUpstreamStatus
	}
	x.conn = c
	x.dec.init(c.br, &h, false)
	if bytes.HasPrefix(h.ContentType(), ctEventStream) {
		_, _ = x.pump(io.Discard, false)
		return
	}
	var buf bytes.Buffer
	_, err = buf.ReadFrom(&x.dec)
	rec.EndNS = now()
	if err != nil {
		x.release(false)
		x.readError(err)
	} else {
		x.release(x.dec.reusable())
		x.tap.body(buf.Bytes())
	}
	rec.BytesOut = int64(buf.Len())
	x.done()
}
