package proxy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/valyala/fastjson"
)

// clientRequest is what the proxy needs to know about an OpenAI request body.
type clientRequest struct {
	model        string
	stream       bool
	includeUsage bool   // the client itself asked for the usage chunk
	user         string // OpenAI "user" field, a sticky key candidate
}

var errNotObject = errors.New("request body must be a JSON object")

// rewriter parses and rewrites request bodies; one per in-flight request,
// pooled, so the parse allocates nothing in steady state.
type rewriter struct {
	parser fastjson.Parser
	arena  fastjson.Arena
	v      *fastjson.Value
	out    []byte // render's result
	prompt []byte // digest's scratch: render's result may still be in use
}

// parse reads what the proxy needs to route and rewrite a request body.
// The parsed value stays in rw for render and digest.
func (rw *rewriter) parse(body []byte) (clientRequest, error) {
	var cr clientRequest
	v, err := rw.parser.ParseBytes(body)
	if err != nil {
		return cr, err
	}
	if v.Type() != fastjson.TypeObject {
		return cr, errNotObject
	}
	rw.v = v
	rw.arena.Reset()
	cr.model = string(v.GetStringBytes("model"))
	cr.stream = v.GetBool("stream")
	cr.includeUsage = v.GetBool("stream_options", "include_usage")
	cr.user = string(v.GetStringBytes("user"))
	return cr, nil
}

// digest is the hex SHA-256 of the parsed body's messages (or prompt) as
// JSON, with that JSON itself when keep is set; empty when the body has
// neither. The record needs it, the backend does not: the proxy takes it
// once the request is on its way, off the time to first token (a 30 KiB
// prompt costs some 20 µs). render does not change what it reads.
func (rw *rewriter) digest(keep bool) (sum, prompt string) {
	p := rw.v.Get("messages")
	if p == nil {
		p = rw.v.Get("prompt")
	}
	if p == nil {
		return "", ""
	}
	rw.prompt = p.MarshalTo(rw.prompt[:0])
	h := sha256.Sum256(rw.prompt)
	if keep {
		prompt = string(rw.prompt)
	}
	return hex.EncodeToString(h[:]), prompt
}

// render returns the body to send to a backend serving backendModel: the
// model replaced when it differs, and stream_options.include_usage set on
// streams so that every stream reports usage. When nothing changes the
// original bytes are returned untouched; otherwise the result aliases rw's
// buffer until the next call. render may be called again for another
// backend (mirroring).
func (rw *rewriter) render(body []byte, cr clientRequest, backendModel string) []byte {
	changeModel := backendModel != "" && cr.model != backendModel
	addUsage := cr.stream && !cr.includeUsage
	if !changeModel && !addUsage {
		return body
	}
	v := rw.v
	// set the model every time: an earlier render for another backend
	// may have changed it in v
	if model := cmp.Or(backendModel, cr.model); model != "" {
		v.Set("model", rw.arena.NewString(model))
	} else {
		v.Del("model")
	}
	if addUsage {
		so := v.Get("stream_options")
		if so == nil || so.Type() != fastjson.TypeObject {
			so = rw.arena.NewObject()
			v.Set("stream_options", so)
		}
		so.Set("include_usage", rw.arena.NewTrue())
	}
	rw.out = v.MarshalTo(rw.out[:0])
	return rw.out
}
