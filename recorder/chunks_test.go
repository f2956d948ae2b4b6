package recorder

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestChunksRoundTrip(t *testing.T) {
	const start = int64(1_750_000_000_000_000_000)
	cases := map[string][]int64{
		"one":           {start + 12_345_678},
		"at start":      {start, start, start + 1},
		"typical":       {start + 200e6, start + 230e6, start + 261e6, start + 290e6},
		"huge gap":      {start + 1, start + 1 + 1<<40},
		"near max":      {math.MaxInt64 - 1, math.MaxInt64},
		"equal times":   {start + 5, start + 5, start + 5},
		"one ns apart":  {start + 1, start + 2, start + 3, start + 4},
		"127/128 edges": {start + 127, start + 255, start + 383, start + 16383 + 383},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			blob := EncodeChunks(start, in)
			out, err := DecodeChunks(start, blob)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !slices.Equal(out, in) {
				t.Fatalf("round trip:\n got %v\nwant %v", out, in)
			}
		})
	}
}

func TestChunksRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		start := rng.Int64N(1 << 62)
		in := make([]int64, rng.IntN(300))
		t0 := start
		for i := range in {
			t0 += rng.Int64N(1 << uint(rng.IntN(40)+1))
			in[i] = t0
		}
		out, err := DecodeChunks(start, EncodeChunks(start, in))
		if err != nil {
			t.Fatal(err)
		}
		if len(in) == 0 && out != nil {
			t.Fatalf("empty input decoded to %v", out)
		}
		if !slices.Equal(out, in) {
			t.Fatalf("round trip mismatch for start %d", start)
		}
	}
}

func TestChunksFormat(t *testing.T) {
	// pin the documented wire format: uvarint(first-start), uvarint(gap)...
	got := EncodeChunks(1000, []int64{1001, 1001 + 300})
	want := []byte{0x01, 0xAC, 0x02} // 1, then 300 = 0b1_0010_1100
	if !bytes.Equal(got, want) {
		t.Fatalf("EncodeChunks = % x, want % x", got, want)
	}
	if EncodeChunks(5, nil) != nil {
		t.Fatal("no chunks must encode to nil (stored as NULL)")
	}
}

func TestChunksClampBackwards(t *testing.T) {
	// a wall-clock step backwards must not break the record: the count is
	// kept and the out-of-order time becomes equal to the previous one
	start := int64(1000)
	out, err := DecodeChunks(start, EncodeChunks(start, []int64{900, 1100, 1050, 1200}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{1000, 1100, 1100, 1200}; !slices.Equal(out, want) {
		t.Fatalf("got %v, want %v", out, want)
	}
}

func TestDecodeChunksErrors(t *testing.T) {
	cases := map[string]struct {
		start int64
		blob  []byte
	}{
		"truncated":       {0, []byte{0x01, 0x80}},
		"only continue":   {0, []byte{0xFF}},
		"uvarint too big": {0, []byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02}},
		"above int64":     {0, []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}},
		"sum overflows":   {math.MaxInt64 - 1, []byte{0x01, 0x01}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if out, err := DecodeChunks(c.start, c.blob); err == nil {
				t.Fatalf("want error, got %v", out)
			}
		})
	}
}

// FuzzDecodeChunks feeds arbitrary blobs to the decoder, which reads data
// from files users may have edited: it must never panic, and whatever it
// accepts must be ascending and survive a re-encode.
func FuzzDecodeChunks(f *testing.F) {
	f.Add(int64(0), []byte{})
	f.Add(int64(1000), EncodeChunks(1000, []int64{1001, 1301, 1_000_000_000}))
	f.Add(int64(math.MaxInt64-1), []byte{0x01, 0x01})
	f.Add(int64(math.MinInt64), []byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})
	f.Add(int64(0), []byte{0x80, 0x00})
	f.Fuzz(func(t *testing.T, start int64, blob []byte) {
		out, err := DecodeChunks(start, blob)
		if err != nil {
			return
		}
		prev := start
		for _, v := range out {
			if v < prev {
				t.Fatalf("decoded times not ascending from start %d: %v", start, out)
			}
			prev = v
		}
		again, err := DecodeChunks(start, EncodeChunks(start, out))
		if err != nil {
			t.Fatalf("re-encode of %v: %v", out, err)
		}
		if !slices.Equal(again, out) {
			t.Fatalf("re-encode changed values: %v -> %v", out, again)
		}
	})
}
