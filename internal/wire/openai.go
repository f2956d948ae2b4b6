package wire

import "github.com/valyala/fastjson"

// ChoiceText is the text one choice of an OpenAI response chunk carries,
// by DESIGN.md's definition of a content event: the delta's content, else
// its reasoning_content, else its reasoning; for /v1/completions, text.
// The proxy's tap and bench's client both count content events with it.
func ChoiceText(c *fastjson.Value) []byte {
	d := c.Get("delta")
	if d == nil {
		return c.GetStringBytes("text") // /v1/completions
	}
	text := d.GetStringBytes("content")
	if len(text) == 0 {
		text = d.GetStringBytes("reasoning_content")
	}
	if len(text) == 0 {
		text = d.GetStringBytes("reasoning")
	}
	return text
}

// ReadUsage reads prompt_tokens and completion_tokens from v's usage
// object into *prompt and *completion, leaving each as it was when absent.
func ReadUsage(v *fastjson.Value, prompt, completion *int) {
	u := v.Get("usage")
	if u == nil || u.Type() != fastjson.TypeObject {
		return
	}
	if p := u.Get("prompt_tokens"); p != nil {
		if n, err := p.Int(); err == nil {
			*prompt = n
		}
	}
	if c := u.Get("completion_tokens"); c != nil {
		if n, err := c.Int(); err == nil {
			*completion = n
		}
	}
}
