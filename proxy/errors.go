package proxy

import (
	"encoding/json"

	"github.com/valyala/fasthttp"
)

// Error classes stored in requests.error. They are part of the storage
// contract: reports and users' SQL group by them.
const (
	ErrBadRequest          = "bad_request"
	ErrBodyTooLarge        = "body_too_large"
	ErrUnknownBackend      = "unknown_backend"
	ErrUpstreamUnreachable = "upstream_unreachable"
	ErrUpstreamStatus      = "upstream_status"
	ErrUpstreamReset       = "upstream_reset"
	ErrTimeout             = "timeout"
	ErrClientCancelled     = "client_cancelled"
	ErrShutdown            = "proxy_shutdown"
	ErrNotFound            = "not_found"
)

// openAIError is the OpenAI error body the proxy answers with, so that SDKs
// surface the message instead of a parse error.
type openAIError struct {
	Error openAIErrorBody `json:"error"`
}

type openAIErrorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    any     `json:"code"`
}

func errorBody(status int, typ, code, msg string) []byte {
	var c any = code
	if code == "" {
		c = nil
	}
	b, _ := json.Marshal(openAIError{Error: openAIErrorBody{Message: msg, Type: typ, Code: c}})
	return b
}

func writeError(ctx *fasthttp.RequestCtx, status int, typ, code, msg string) int {
	b := errorBody(status, typ, code, msg)
	ctx.Response.Header.SetContentType("application/json")
	ctx.SetStatusCode(status)
	ctx.SetBody(b)
	return len(b)
}

// errorEvent is what a stream ends with when the proxy must cut it short:
// an SSE event carrying an OpenAI error object, which the OpenAI SDKs raise.
func errorEvent(typ, code, msg string) []byte {
	b := errorBody(0, typ, code, msg)
	out := make([]byte, 0, len(b)+8)
	out = append(out, "data: "...)
	out = append(out, b...)
	return append(out, "\n\n"...)
}
