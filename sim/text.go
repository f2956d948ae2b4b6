package sim

import (
	"math"
	"strconv"

	"github.com/abproxy/abproxy/internal/wire"
)

// vocab is the simulated model's output vocabulary: one entry is one token
// and one streamed chunk. Most are plain words with a leading space, like
// BPE tokens; a few carry characters that need JSON escaping or are not
// ASCII, so clients and proxies exercise their decoders on every run.
var vocab = []string{
	" the", " of", " and", " to", " a", " in", " is", " that", " for", " it",
	" as", " was", " with", " be", " by", " on", " not", " he", " this", " are",
	" or", " his", " from", " at", " which", " but", " have", " an", " had", " they",
	" you", " were", " their", " one", " all", " we", " can", " her", " has", " there",
	" been", " if", " more", " when", " will", " would", " who", " so", " no", " out",
	" model", " token", " server", " request", " latency", " batch", " cache", " memory", " stream", " queue",
	" summer", " rose", " beauty", " time", " love", " eye", " heart", " world", " day", " night",
	" light", " truth", " youth", " age", " fair", " sweet", " thou", " thy", " thee", " doth",
	" measure", " compare", " answer", " faster", " slower", " better", " same", " change", " evidence", " result",
	" first", " last", " many", " few", " small", " large", " long", " short", " high", " low",
	",", ",", ".", ";", ":", " —", " (", ")", "\n", "\n\n",
	" \"", "\"", " 'quoted'", "\\", "\t", " café", " naïve", " 東京", " π", " →",
}

// stopText is the last token of a response that ends naturally
// (finish_reason "stop"): a visible token, so that completion_tokens always
// equals the number of content chunks.
const stopText = "."

var (
	vocabJSON [][]byte // vocab entries JSON-escaped (without quotes), built once
	stopJSON  []byte
)

func init() {
	vocabJSON = make([][]byte, len(vocab))
	for i, w := range vocab {
		vocabJSON[i] = wire.AppendJSONString(nil, w)
	}
	stopJSON = wire.AppendJSONString(nil, stopText)
}

// splitmix64 is a fast, well-mixed 64-bit hash step; it turns (seed, prompt,
// position) into token choices without any state.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// fnv64 hashes prompt text. It must be stable across processes (unlike
// hash/maphash) because outputs must be reproducible run to run.
type fnv64 uint64

const fnvOffset fnv64 = 14695981039346656037

func (h fnv64) add(s string) fnv64 {
	for i := 0; i < len(s); i++ {
		h ^= fnv64(s[i])
		h *= 1099511628211
	}
	return h
}

func (h fnv64) addUint(v uint64) fnv64 {
	return h.add(strconv.FormatUint(v, 16)).add("\x00")
}

// textBase derives the per-request output seed. At temperature 0 the text
// depends only on the server seed and the prompt (a greedy model answers the
// same every time; two servers with the same seed "run the same weights").
// At temperature > 0 the temperature and the request's own seed join in, so
// sampling settings change the text but it stays reproducible.
func textBase(serverSeed int64, promptHash uint64, temperature float64, reqSeed *int64) uint64 {
	b := splitmix64(uint64(serverSeed) ^ splitmix64(promptHash))
	if temperature > 0 {
		b = splitmix64(b ^ math.Float64bits(temperature))
		if reqSeed != nil {
			b = splitmix64(b ^ uint64(*reqSeed) ^ 0x5eed)
		}
	}
	return b
}

// tokenIndex picks the vocab entry of output position i.
func tokenIndex(base uint64, i int) int {
	return int(splitmix64(base+uint64(i)*0x9e3779b97f4a7c15) % uint64(len(vocab)))
}

// naturalLength is where the simulated model would emit EOS: deterministic
// per request, between 32 and 1024 tokens, like a chat answer.
func naturalLength(base uint64) int {
	return 32 + int(splitmix64(base^0xe05)%993)
}

// tokenJSON is the JSON-escaped text of output token i of n, where the last
// token of a naturally stopped response is stopText.
func tokenJSON(base uint64, i, n int, stop bool) []byte {
	if stop && i == n-1 {
		return stopJSON
	}
	return vocabJSON[tokenIndex(base, i)]
}

// tokenString is tokenJSON's unescaped twin, for non-streamed bodies built
// by tests and for documentation; the server itself appends escaped bytes.
func tokenString(base uint64, i, n int, stop bool) string {
	if stop && i == n-1 {
		return stopText
	}
	return vocab[tokenIndex(base, i)]
}

const hexDigits = "0123456789abcdef"
