package tokenizer

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// benchEncode reports throughput in MB/s (via SetBytes) and tokens/s.
func benchEncode(b *testing.B, text string, f func(string) int) {
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	tokens := 0
	for b.Loop() {
		tokens += f(text)
	}
	b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkEncode is the load generator's case: the same corpus over and
// over, so the word cache is warm.
func BenchmarkEncode(b *testing.B) {
	tok, text := qwen(b), sonnet(b)
	benchEncode(b, text, func(s string) int { return len(tok.Encode(s)) })
}

// BenchmarkCount is the sim's case.
func BenchmarkCount(b *testing.B) {
	tok, text := qwen(b), sonnet(b)
	benchEncode(b, text, tok.Count)
}

func BenchmarkCountChat(b *testing.B) {
	tok, text := qwen(b), sonnet(b)
	msgs := []Message{{Role: "user", Content: text}}
	benchEncode(b, text, func(string) int { return tok.CountChat(msgs) })
}

// BenchmarkEncodeColdCache measures BPE itself: every word is new (random
// letters), so nothing comes from the cache.
func BenchmarkEncodeColdCache(b *testing.B) {
	tok := qwen(b)
	r := rand.New(rand.NewPCG(7, 8))
	var sb strings.Builder
	for sb.Len() < 1<<20 {
		sb.WriteByte(' ')
		for range 3 + r.IntN(8) {
			sb.WriteByte(byte('a' + r.IntN(26)))
		}
	}
	text := sb.String()
	chunk := 4096
	i := 0
	benchEncode(b, text[:chunk], func(string) int {
		s := text[i*chunk : (i+1)*chunk]
		i = (i + 1) % (len(text) / chunk)
		return tok.Count(s)
	})
}

func BenchmarkEncodeParallel(b *testing.B) {
	tok, text := qwen(b), sonnet(b)
	b.SetBytes(int64(len(text)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tok.Encode(text)
		}
	})
}

func BenchmarkLoad(b *testing.B) {
	qwen(b)
	for b.Loop() {
		if _, err := Load(qwenDir); err != nil {
			b.Fatal(err)
		}
	}
}
