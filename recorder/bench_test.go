package recorder

import (
	"context"
	"encoding/hex"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRecorderThroughput measures sustained records/s from Submit to
// committed rows, with 100 chunk times per record like a 100-token stream.
// The queue is sized to hold every record so the figure is the writer's
// speed, not a drop rate; the target is >= 50,000 records/s.
func BenchmarkRecorderThroughput(b *testing.B) {
	r, rng, templates := openBench(b, Options{Path: b.TempDir() + "/bench.db", QueueSize: b.N + 1})
	b.ReportAllocs()
	b.ResetTimer()
	begin := time.Now()
	for i := range b.N {
		req := templates[i%len(templates)] // copy; the proxy allocates one per request too
		// random-looking ids like the proxy's, so index inserts are realistic
		req.ID = strconv.FormatUint(rng.Uint64(), 36)
		if !r.Submit(&req) {
			b.Fatal("Submit dropped a record")
		}
	}
	if err := r.Close(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(begin)
	b.StopTimer()
	if s := r.Stats(); s.Written != int64(b.N) {
		b.Fatalf("wrote %d of %d", s.Written, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
}

// openBench opens a recorder with a bench run, and returns it with a
// seeded source and benchRequests' records.
func openBench(b *testing.B, opts Options) (*Recorder, *rand.Rand, []Request) {
	r, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.EnsureRun(Run{Name: "bench", Kind: KindBench}); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	return r, rng, benchRequests(rng)
}

// benchRequests returns 64 records like a 100-token stream's, with 100
// chunk times each.
func benchRequests(rng *rand.Rand) []Request {
	const start = int64(1_750_000_000_000_000_000)
	templates := make([]Request, 64)
	for i := range templates {
		chunks := make([]int64, 100)
		t := start + 150e6 + rng.Int64N(50e6)
		for j := range chunks {
			chunks[j] = t
			t += 20e6 + rng.Int64N(20e6) // 20-40 ms ITL
		}
		var sum [32]byte
		for k := range sum {
			sum[k] = byte(rng.Uint32())
		}
		h := hex.EncodeToString(sum[:])
		templates[i] = Request{Run: "bench", Backend: "optimized", Role: RolePrimary, PairID: "",
			Endpoint: "/v1/chat/completions", Model: "Qwen/Qwen2.5-14B-Instruct", Stream: true, Status: 200,
			StartNS: start, UpstreamNS: start + 50_000, FirstByteNS: start + 140e6, FirstTokenNS: chunks[0], EndNS: t,
			ChunkNS: chunks, PromptTokens: 1000 + i, CompletionTokens: 100, TokensSource: TokensUsage,
			FinishReason: "length", OutputSHA256: h, PromptSHA256: h, BytesIn: 4200, BytesOut: 21000}
	}
	return templates
}

// BenchmarkSubmitSparse hands the recorder one record at a time with a gap
// between them, as the proxy does at one stream, where the writer is idle
// whenever a record arrives. It reports the time spent in Submit and the
// whole process's CPU per record, writer included: waking the writer for
// every record shows in both.
func BenchmarkSubmitSparse(b *testing.B) {
	r, err := Open(Options{Path: b.TempDir() + "/sparse.db"})
	if err != nil {
		b.Fatal(err)
	}
	req := Request{Run: "bench", Backend: "optimized", Role: RolePrimary, Endpoint: "/v1/chat/completions",
		Stream: true, Status: 200, StartNS: 1, EndNS: 2, ChunkNS: []int64{1, 2}}
	reqs := make([]Request, b.N)
	for i := range reqs {
		reqs[i] = req
		reqs[i].ID = strconv.Itoa(i)
	}
	var inSubmit time.Duration
	cpu0 := processCPU(b)
	b.ResetTimer()
	for i := range reqs {
		time.Sleep(100 * time.Microsecond) // a gap, as between one stream's requests
		t0 := time.Now()
		if !r.Submit(&reqs[i]) {
			b.Fatal("Submit dropped a record")
		}
		inSubmit += time.Since(t0)
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	if err := r.Close(); err != nil {
		b.Fatal(err)
	}
	if s := r.Stats(); s.Written != int64(b.N) {
		b.Fatalf("wrote %d of %d", s.Written, b.N)
	}
	b.ReportMetric(float64(inSubmit.Nanoseconds())/float64(b.N), "submit-ns/op")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU is the user and system CPU this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTransaction measures what one transaction costs the process
// (the writer's CPU and the wake-up of Flush included) with 1, 4 and 16
// records in it: under light load the writer commits once per
// FlushInterval with whatever arrived, so the fixed part is paid per
// interval, not per record.
func BenchmarkTransaction(b *testing.B) {
	for _, k := range []int{1, 4, 16} {
		b.Run("records="+strconv.Itoa(k), func(b *testing.B) {
			r, rng, templates := openBench(b, Options{Path: b.TempDir() + "/tx.db", FlushInterval: time.Hour})
			reqs := make([]Request, b.N*k)
			for i := range reqs {
				reqs[i] = templates[i%len(templates)]
				reqs[i].ID = strconv.FormatUint(rng.Uint64(), 36)
			}
			ctx := context.Background()
			cpu0 := processCPU(b)
			b.ResetTimer()
			for i := range b.N {
				for j := range k {
					if !r.Submit(&reqs[i*k+j]) {
						b.Fatal("Submit dropped a record")
					}
				}
				if err := r.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu := processCPU(b) - cpu0
			if err := r.Close(); err != nil {
				b.Fatal(err)
			}
			if s := r.Stats(); s.Written != int64(b.N*k) {
				b.Fatalf("wrote %d of %d", s.Written, b.N*k)
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/1e3, "cpu-us/tx")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*k)/1e3, "cpu-us/record")
		})
	}
}
