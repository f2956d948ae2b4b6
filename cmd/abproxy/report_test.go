package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/abproxy/abproxy/recorder"
)

// reportDB writes a small two-backend sweep with the recorder.
func reportDB(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "study.db")
	rec, err := recorder.Open(recorder.Options{Path: path, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
	for _, b := range []string{"baseline", "optimized"} {
		speed := int64(1)
		if b == "optimized" {
			speed = 2
		}
		for _, c := range []int{2, 8} {
			name := "study/c" + string(rune('0'+c)) + "/" + b
			if _, err := rec.EnsureRun(recorder.Run{Name: name, Kind: recorder.KindBench, Backend: b, Scenario: "D(100,100)",
				Concurrency: c, StartedNS: t0, EndedNS: t0 + int64(time.Minute), Meta: json.RawMessage(`{"command":"bench","args":["bench","--num-concurrency","2,8"]}`)}); err != nil {
				t.Fatal(err)
			}
			for i := range 20 {
				start := t0 + int64(i)*int64(50*time.Millisecond)
				ttft := int64(100+i+c*10) * int64(time.Millisecond) / speed
				var chunks []int64
				for k := range 10 {
					chunks = append(chunks, start+ttft+int64(k)*int64(20*time.Millisecond)/speed)
				}
				r := &recorder.Request{ID: name + string(rune('a'+i)), Run: name, Backend: b, Role: recorder.RolePrimary,
					Endpoint: "/v1/chat/completions", Stream: true, Status: 200, StartNS: start, FirstTokenNS: start + ttft,
					EndNS: chunks[9], ChunkNS: chunks, PromptTokens: 100, CompletionTokens: 10}
				if i == 0 && c == 8 {
					r.Status, r.Error, r.FirstTokenNS, r.ChunkNS, r.CompletionTokens = 503, "upstream_status", 0, nil, -1
				}
				rec.Submit(r)
			}
		}
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReportCLI(t *testing.T) {
	db := reportDB(t)
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		out, err := exec.Command(binPath, args...).CombinedOutput()
		return string(out), err
	}
	out, err := run("report", "--db", db)
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	for _, want := range []string{"MAX THROUGHPUT TEST", "MIN LATENCY TEST", "IMPROVEMENT SUMMARY", "optimized is better than baseline on E2E P50 (c=2)", "HTTP statuses"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q:\n%s", want, out)
		}
	}
	out, err = run("report", "--db", db, "--format", "json", "--slo", "ttft=80ms")
	if err != nil {
		t.Fatalf("report json: %v\n%s", err, out)
	}
	var rep struct {
		Schema string `json:"schema"`
		Runs   []struct {
			Run       string             `json:"run"`
			ErrorRate float64            `json:"error_rate"`
			Statuses  map[string]int     `json:"statuses"`
			Goodput   *struct{ Met int } `json:"goodput"`
		} `json:"runs"`
		Improvement []struct{ Verdict string } `json:"improvement"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	if rep.Schema != "abproxy.report/v1" || len(rep.Runs) != 4 || len(rep.Improvement) != 2 || rep.Runs[0].Goodput == nil {
		t.Errorf("json report: %+v", rep)
	}
	for _, r := range rep.Runs {
		if strings.HasPrefix(r.Run, "study/c8") && (r.ErrorRate != 0.05 || r.Statuses["503"] != 1) {
			t.Errorf("%s: error rate %v statuses %v, want 1 of 20 failed", r.Run, r.ErrorRate, r.Statuses)
		}
	}
	html := filepath.Join(dir, "r.html")
	if out, err := run("report", "--db", db, "--out", html, "--backend", "baseline,optimized", "--run", "study/*"); err != nil {
		t.Fatalf("report --out: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(html); !strings.Contains(string(b), `<svg class="chart" data-chart="throughput"`) {
		t.Errorf("--out r.html did not write the HTML report")
	}
	csvOut, err := run("report", "--db", db, "-f", "csv")
	if err != nil || !strings.HasPrefix(csvOut, "section,run,kind,backend") || strings.Count(csvOut, "\n") != 5 {
		t.Errorf("csv: %v\n%s", err, csvOut)
	}

	// failures: one clear sentence each, exit status 1
	empty := filepath.Join(dir, "empty.db")
	rec, err := recorder.Open(recorder.Options{Path: empty})
	if err != nil {
		t.Fatal(err)
	}
	rec.Close()
	foreign := filepath.Join(dir, "foreign.db")
	fdb, _ := sql.Open("sqlite3", foreign)
	fdb.Exec(`CREATE TABLE photos(id INTEGER)`)
	fdb.Close()
	notSQLite := filepath.Join(dir, "notes.txt")
	os.WriteFile(notSQLite, []byte("hello, this is not a database at all, just text that is long enough"), 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--db", filepath.Join(dir, "none.db")}, "no such database file"},
		{[]string{"--db", empty}, "has no runs yet"},
		{[]string{"--db", foreign}, "not an abproxy database"},
		{[]string{"--db", notSQLite}, "not an abproxy database"},
		{[]string{"--db", db, "--run", "nosuch"}, "no run in " + db + " matches --run nosuch"},
		{[]string{"--db", db, "--backend", "turbo"}, "--backend turbo (recorded backends: baseline, optimized)"},
		{[]string{"--db", db, "--baseline", "turbo"}, "--baseline turbo is not a backend"},
		{[]string{"--db", db, "--format", "pdf"}, `--format "pdf" is not one of text, markdown, json, csv, html`},
		{[]string{"--db", db, "--slo", "fast"}, `is not NAME=DURATION`},
		{[]string{"--db", db, "--since", "yesterday"}, `--since "yesterday"`},
	}
	for _, c := range cases {
		out, err := run(append([]string{"report"}, c.args...)...)
		if err == nil {
			t.Errorf("report %v succeeded, want an error", c.args)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("report %v said %q, want %q", c.args, out, c.want)
		}
		if n := strings.Count(strings.TrimSpace(out), "\n"); n > 0 {
			t.Errorf("report %v printed %d lines for one error:\n%s", c.args, n+1, out)
		}
	}
}

// TestDemoEndToEnd runs `abproxy demo` as `make demo` does (with -short,
// a smaller load) and checks the report it prints and writes.
func TestDemoEndToEnd(t *testing.T) {
	dir := t.TempDir()
	args := []string{"demo"}
	if testing.Short() {
		args = append(args, "--requests", "8", "--speedup", "20")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Dir = dir
	start := time.Now()
	outB, err := cmd.CombinedOutput()
	out := string(outB)
	if err != nil {
		t.Fatalf("abproxy demo: %v\n%s", err, out)
	}
	t.Logf("abproxy %s took %s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	for _, want := range []string{
		"sim baseline", "sim optimized", "proxy", // what it started
		"[1/6] D(100,100) c2 baseline", "done (max_requests)", // live progress from bench
		"MAX THROUGHPUT TEST", "MIN LATENCY TEST", "IMPROVEMENT SUMMARY", "COMPARISON BY LOAD LEVEL", "PROVENANCE",
		"optimized is better than baseline on E2E P50 (c=2)",
		"Server State", // the sims' own /metrics, scraped while the runs went
		"Demo finished", "report.html",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
	html, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatalf("demo did not write report.html: %v", err)
	}
	for _, chart := range []string{"throughput", "ttft", "curve", "cdf-e2e", "itl"} {
		if !strings.Contains(string(html), `data-chart="`+chart+`"`) {
			t.Errorf("report.html lacks the %s chart", chart)
		}
	}
	db, err := recorder.OpenReadOnly(filepath.Join(dir, "abproxy-demo.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var runs, reqs, failed int
	db.QueryRow(`SELECT count(*) FROM runs WHERE kind = 'bench'`).Scan(&runs)
	db.QueryRow(`SELECT count(*), count(error) FROM requests WHERE endpoint = '/v1/chat/completions'`).Scan(&reqs, &failed)
	perRun := 64
	if testing.Short() {
		perRun = 8
	}
	if runs != 12 || reqs != 12*perRun || failed != 0 {
		t.Errorf("demo database: %d bench runs, %d requests (%d failed); want 12, %d, 0", runs, reqs, failed, 12*perRun)
	}
	var scraped int
	db.QueryRow(`SELECT count(DISTINCT backend) FROM backend_metrics WHERE name = 'vllm:num_requests_running'`).Scan(&scraped)
	if scraped != 2 {
		t.Errorf("backend_metrics holds vllm:num_requests_running for %d backends; want both sims", scraped)
	}
	if strings.Contains(out, "warning") {
		t.Errorf("demo printed a warning:\n%s", out)
	}
}
