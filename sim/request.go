package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/abproxy/abproxy/tokenizer"
)

// Message is one chat message as the sim sees it: role and flattened text
// content (text parts of a multi-part content are joined with "\n", other
// parts are ignored). It is the tokenizer's type, so that a tokenizer's
// CountPrompt plugs straight into Options.CountPrompt.
type Message = tokenizer.Message

// apiRequest is the subset of vLLM's ChatCompletionRequest and
// CompletionRequest the sim honours. Unknown fields are ignored, as vLLM
// ignores (and warns about) them.
type apiRequest struct {
	Model               string          `json:"model"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	MinTokens           *int            `json:"min_tokens"`
	IgnoreEOS           bool            `json:"ignore_eos"`
	Temperature         *float64        `json:"temperature"`
	Seed                *int64          `json:"seed"`
	N                   *int            `json:"n"`
	Stream              *bool           `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
}

type streamOptions struct {
	IncludeUsage         *bool `json:"include_usage"`
	ContinuousUsageStats *bool `json:"continuous_usage_stats"`
}

// set mirrors Python truthiness of the options dict in vLLM's validator:
// an empty object counts as absent.
func (o *streamOptions) set() bool {
	return o != nil && (o.IncludeUsage != nil || o.ContinuousUsageStats != nil)
}

type apiMessage struct {
	Role    *string         `json:"role"`
	Content json.RawMessage `json:"content"`
}

type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

var jsonNull = []byte("null")

func isAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || bytes.Equal(raw, jsonNull)
}

// parseMessages decodes the messages array, flattening content to text.
func parseMessages(raw json.RawMessage) ([]Message, error) {
	if isAbsent(raw) {
		return nil, fmt.Errorf("Field required: messages")
	}
	var ms []apiMessage
	if err := json.Unmarshal(raw, &ms); err != nil {
		return nil, fmt.Errorf("messages must be an array of message objects")
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("messages must contain at least one message")
	}
	out := make([]Message, len(ms))
	for i, m := range ms {
		if m.Role == nil || *m.Role == "" {
			return nil, fmt.Errorf("Field required: messages[%d].role", i)
		}
		out[i].Role = *m.Role
		if isAbsent(m.Content) {
			continue
		}
		switch m.Content[0] {
		case '"':
			if err := json.Unmarshal(m.Content, &out[i].Content); err != nil {
				return nil, fmt.Errorf("messages[%d].content is not a valid string", i)
			}
		case '[':
			var parts []contentPart
			if err := json.Unmarshal(m.Content, &parts); err != nil {
				return nil, fmt.Errorf("messages[%d].content must be a string or an array of content parts", i)
			}
			var b []byte
			for _, p := range parts {
				if p.Type != "text" {
					continue
				}
				if len(b) > 0 {
					b = append(b, '\n')
				}
				b = append(b, p.Text...)
			}
			out[i].Content = string(b)
		default:
			return nil, fmt.Errorf("messages[%d].content must be a string or an array of content parts", i)
		}
	}
	return out, nil
}

// parsePrompt decodes a completions prompt. It returns the text, or the
// token count when the prompt is given as token ids (then text is empty
// and the count is exact).
func parsePrompt(raw json.RawMessage) (text string, ids int, err error) {
	if isAbsent(raw) {
		return "", 0, fmt.Errorf("Field required: prompt")
	}
	one := "the simulator serves one prompt per request"
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return "", 0, fmt.Errorf("prompt is not a valid string")
		}
	case '[':
		var strs []string
		if json.Unmarshal(raw, &strs) == nil {
			if len(strs) != 1 {
				return "", 0, fmt.Errorf("prompt has %d entries, but %s", len(strs), one)
			}
			text = strs[0]
			break
		}
		var toks []int64
		if json.Unmarshal(raw, &toks) == nil {
			ids = len(toks)
			break
		}
		var batches [][]int64
		if json.Unmarshal(raw, &batches) == nil {
			if len(batches) != 1 {
				return "", 0, fmt.Errorf("prompt has %d entries, but %s", len(batches), one)
			}
			ids = len(batches[0])
			break
		}
		return "", 0, fmt.Errorf("prompt must be a string, an array of strings or an array of token ids")
	default:
		return "", 0, fmt.Errorf("prompt must be a string, an array of strings or an array of token ids")
	}
	if text == "" && ids == 0 {
		return "", 0, fmt.Errorf("Prompt cannot be empty.")
	}
	return text, ids, nil
}

// formatPyFloat prints a float the way Python's repr does for the values
// that show up in error messages (always with a decimal point).
func formatPyFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !bytes.ContainsAny([]byte(s), ".eEn") {
		s += ".0"
	}
	return s
}
