package tokenizer

import "strings"

// Message is one chat message as the OpenAI API carries it.
type Message struct {
	Role    string
	Content string
}

// DefaultSystemPrompt is what Qwen2.5-Instruct's chat template injects when
// the conversation does not start with a system message.
const DefaultSystemPrompt = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

// ChatTemplate renders msgs with Qwen2.5-Instruct's chat template
// (tokenizer_config.json's chat_template, without tools), so prompt sizes
// match what vLLM feeds the model. Like the Jinja template it:
//   - opens with messages[0] as the system turn when its role is "system",
//     else with DefaultSystemPrompt;
//   - renders user, assistant and later system messages as
//     "<|im_start|>{role}\n{content}<|im_end|>\n";
//   - wraps runs of "tool" messages in one user turn of
//     "\n<tool_response>\n{content}\n</tool_response>" blocks;
//   - renders nothing for other roles;
//   - ends with "<|im_start|>assistant\n" when addGenerationPrompt.
//
// With no messages it renders just the default system turn (the Jinja
// template would fail on messages[0]).
func ChatTemplate(msgs []Message, addGenerationPrompt bool) string {
	var b strings.Builder
	n := 128
	for _, m := range msgs {
		n += len(m.Role) + len(m.Content) + 48
	}
	b.Grow(n)
	if len(msgs) > 0 && msgs[0].Role == "system" {
		b.WriteString("<|im_start|>system\n")
		b.WriteString(msgs[0].Content)
		b.WriteString("<|im_end|>\n")
	} else {
		b.WriteString("<|im_start|>system\n" + DefaultSystemPrompt + "<|im_end|>\n")
	}
	for i, m := range msgs {
		switch {
		case m.Role == "user" || m.Role == "assistant" || (m.Role == "system" && i > 0):
			b.WriteString("<|im_start|>")
			b.WriteString(m.Role)
			b.WriteString("\n")
			b.WriteString(m.Content)
			b.WriteString("<|im_end|>\n")
		case m.Role == "tool":
			if i == 0 || msgs[i-1].Role != "tool" {
				b.WriteString("<|im_start|>user")
			}
			b.WriteString("\n<tool_response>\n")
			b.WriteString(m.Content)
			b.WriteString("\n</tool_response>")
			if i == len(msgs)-1 || msgs[i+1].Role != "tool" {
				b.WriteString("<|im_end|>\n")
			}
		}
	}
	if addGenerationPrompt {
		b.WriteString("<|im_start|>assistant\n")
	}
	return b.String()
}

// CountChat returns the prompt_tokens a Qwen2.5 server reports for a chat
// request: Count(ChatTemplate(msgs, true)). For one user message X that does
// not start with a line break this is 29 + Count(X).
func (t *Tokenizer) CountChat(msgs []Message) int {
	return t.Count(ChatTemplate(msgs, true))
}

// CountPrompt counts a request's prompt tokens as vLLM does: a chat
// request's messages rendered with the chat template and the generation
// prompt (msgs not nil), else a completion's prompt as is. It is what
// `abproxy sim --tokenizer` plugs into the sim.
func (t *Tokenizer) CountPrompt(msgs []Message, prompt string) int {
	if msgs == nil {
		return t.Count(prompt)
	}
	return t.CountChat(msgs)
}

// ApproxTextTokens estimates a BPE token count without a tokenizer as one
// token per four bytes, rounded up: good to a few tens of percent for
// English with Qwen2's tokenizer.
func ApproxTextTokens(s string) int { return (len(s) + 3) / 4 }

// ApproxChatTokens estimates the prompt tokens of a chat request rendered
// with Qwen2.5's template, without a tokenizer: each message is
// "<|im_start|>role\n" + content + "<|im_end|>\n" (5 tokens plus content),
// the generation prompt costs 3, and when the first message is not a
// system message the template inserts the default system prompt (about 20
// tokens with its framing). The sim and bench both use it, so that they
// agree when neither has a tokenizer.
func ApproxChatTokens(msgs []Message) int {
	n := 3
	if len(msgs) == 0 || msgs[0].Role != "system" {
		n += 20
	}
	for _, m := range msgs {
		n += 5 + ApproxTextTokens(m.Content)
	}
	return n
}
