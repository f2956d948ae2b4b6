package report

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/abproxy/abproxy/recorder"
)

// ErrNoData is wrapped by every "nothing to report" error: an empty
// database, filters that match nothing. The error's text is one sentence
// for the user.
var ErrNoData = errors.New("nothing to report")

type noDataError struct{ msg string }

func (e *noDataError) Error() string { return e.msg }
func (e *noDataError) Unwrap() error { return ErrNoData }

func noData(requests int, other map[string]int) error {
	if requests == 0 {
		return &noDataError{"no request matches the selection"}
	}
	return &noDataError{fmt.Sprintf("none of the %d selected requests is a completion (%s), so there is nothing to measure", requests, countList(other))}
}

// Build reads the selected runs and requests of an abproxy database (open
// it with recorder.OpenReadOnly) and computes the report. Rows are
// streamed: memory grows with the number of completed requests by a few
// bytes each, never with the rows themselves. When nothing matches, the
// error wraps ErrNoData and says why in one sentence.
func Build(ctx context.Context, db *sql.DB, opts Options) (*Report, error) {
	opts.defaults()
	label := opts.Database
	if label == "" {
		label = "the database"
	}
	all, err := recorder.ListRuns(db)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, &noDataError{fmt.Sprintf("%s has no runs yet: send traffic through `abproxy serve` or run `abproxy bench` first", label)}
	}
	runs, warmups := selectRuns(all, opts.Runs)
	if len(runs) == 0 {
		if len(opts.Runs) > 0 {
			return nil, &noDataError{fmt.Sprintf("no run in %s matches --run %s; its runs are %s", label, strings.Join(opts.Runs, ","), runNames(all, 8))}
		}
		return nil, &noDataError{fmt.Sprintf("%s holds only warmup runs; name one with --run to report it", label)}
	}
	var where []string
	var args []any
	if len(runs) < len(all) {
		ph := make([]string, len(runs))
		for i, r := range runs {
			ph[i] = "?"
			args = append(args, r.ID)
		}
		where = append(where, "run_id IN ("+strings.Join(ph, ",")+")")
	}
	if len(opts.Backends) > 0 {
		ph := make([]string, len(opts.Backends))
		for i, b := range opts.Backends {
			ph[i] = "?"
			args = append(args, b)
		}
		where = append(where, "backend IN ("+strings.Join(ph, ",")+")")
	}
	if !opts.Since.IsZero() {
		where = append(where, "start_ns >= ?")
		args = append(args, opts.Since.UnixNano())
	}
	c := NewCollector(runs, opts)
	if err := scan(ctx, db, all, strings.Join(where, " AND "), args, c.Add); err != nil {
		return nil, err
	}
	if c.counts.Requests == 0 {
		return nil, nothingMatches(ctx, db, label, opts)
	}
	rep, err := c.Report()
	if err != nil {
		return nil, err
	}
	if err := addServerStats(ctx, db, rep); err != nil {
		return nil, err
	}
	if warmups > 0 {
		rep.Notes = append([]string{fmt.Sprintf("%s (bench --warmup) %s left out; name one with --run to include it.", plural(warmups, "warmup run", "warmup runs"), isAre(warmups))}, rep.Notes...)
	}
	return rep, nil
}

// nothingMatches explains an empty selection in one sentence.
func nothingMatches(ctx context.Context, db *sql.DB, label string, opts Options) error {
	var n int
	_ = db.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT 1 FROM requests LIMIT 1)`).Scan(&n)
	if n == 0 {
		return &noDataError{fmt.Sprintf("%s has no recorded requests yet: send traffic through `abproxy serve` or run `abproxy bench` first", label)}
	}
	var parts []string
	if len(opts.Runs) > 0 {
		parts = append(parts, "--run "+strings.Join(opts.Runs, ","))
	}
	if len(opts.Backends) > 0 {
		var have []string
		rows, err := db.QueryContext(ctx, `SELECT DISTINCT coalesce(backend, '') FROM requests ORDER BY 1`)
		if err == nil {
			for rows.Next() {
				var b string
				if rows.Scan(&b) == nil {
					have = append(have, b)
				}
			}
			rows.Close()
		}
		parts = append(parts, fmt.Sprintf("--backend %s (recorded backends: %s)", strings.Join(opts.Backends, ","), strings.Join(have, ", ")))
	}
	if !opts.Since.IsZero() {
		parts = append(parts, "--since "+opts.Since.UTC().Format("2006-01-02T15:04:05Z"))
	}
	return &noDataError{fmt.Sprintf("no request in %s matches %s", label, strings.Join(parts, " and "))}
}

// selectRuns applies --run; warmup runs are left out unless named exactly.
func selectRuns(all []recorder.Run, patterns []string) (sel []recorder.Run, warmups int) {
	matchers := make([]func(string) (bool, bool), len(patterns))
	for i, p := range patterns {
		matchers[i] = runMatcher(p)
	}
	for _, r := range all {
		ok, exact := len(patterns) == 0, false
		for _, m := range matchers {
			if hit, ex := m(r.Name); hit {
				ok = true
				exact = exact || ex
			}
		}
		if !ok {
			continue
		}
		if isWarmup(r) && !exact {
			warmups++
			continue
		}
		sel = append(sel, r)
	}
	return sel, warmups
}

// runMatcher matches a run name: exactly, as a prefix ending at "/", or as
// a pattern with * and ?. The second result says the match was exact.
func runMatcher(p string) func(string) (bool, bool) {
	var re *regexp.Regexp
	if strings.ContainsAny(p, "*?") {
		var sb strings.Builder
		sb.WriteString("^")
		for _, r := range p {
			switch r {
			case '*':
				sb.WriteString(".*")
			case '?':
				sb.WriteString(".")
			default:
				sb.WriteString(regexp.QuoteMeta(string(r)))
			}
		}
		sb.WriteString("$")
		re = regexp.MustCompile(sb.String())
	}
	prefix := strings.TrimSuffix(p, "/") + "/"
	return func(name string) (bool, bool) {
		if name == p {
			return true, true
		}
		if strings.HasPrefix(name, prefix) {
			return true, false
		}
		return re != nil && re.MatchString(name), false
	}
}

func isWarmup(r recorder.Run) bool {
	if len(r.Meta) == 0 {
		return false
	}
	var m struct {
		Warmup bool `json:"warmup"`
	}
	return json.Unmarshal(r.Meta, &m) == nil && m.Warmup
}

func runNames(runs []recorder.Run, max int) string {
	var names []string
	for i, r := range runs {
		if i == max {
			names = append(names, fmt.Sprintf("and %d more", len(runs)-max))
			break
		}
		names = append(names, r.Name)
	}
	return strings.Join(names, ", ")
}

// scan streams the requests matching where to fn, reading only the columns
// the report uses. It is recorder.ScanRequests made lean for reports over
// millions of rows: one reused record, interned strings, chunk times
// decoded into a reused slice, and bodies fetched only for mirrored rows.
// fn must not keep the record.
func scan(ctx context.Context, db *sql.DB, runs []recorder.Run, where string, args []any, fn func(*recorder.Request) error) error {
	names := make(map[int64]string, len(runs))
	for _, r := range runs {
		names[r.ID] = r.Name
	}
	q := `SELECT run_id, backend, role, pair_id, endpoint, status, error, start_ns, first_token_ns, end_ns,
		prompt_tokens, completion_tokens, chunk_ns,
		CASE WHEN pair_id IS NOT NULL THEN output_sha256 END,
		CASE WHEN pair_id IS NOT NULL THEN (SELECT output FROM bodies WHERE bodies.request_id = requests.id LIMIT 1) END
		FROM requests`
	if where != "" {
		q += " WHERE " + where
	}
	q += " ORDER BY rowid"
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("read requests: %w", err)
	}
	defer rows.Close()
	intern := map[string]string{}
	str := func(b sql.RawBytes) string {
		if s, ok := intern[string(b)]; ok {
			return s
		}
		s := string(b)
		if len(intern) < 1<<16 {
			intern[s] = s
		}
		return s
	}
	var (
		runID                                 int64
		backend, role, pair, endpoint, errCls sql.RawBytes
		status, start, first, end, pt, ct     sql.NullInt64
		blob, sha, output                     sql.RawBytes
		rec                                   recorder.Request
	)
	for rows.Next() {
		if err := rows.Scan(&runID, &backend, &role, &pair, &endpoint, &status, &errCls, &start, &first, &end,
			&pt, &ct, &blob, &sha, &output); err != nil {
			return fmt.Errorf("read requests: %w", err)
		}
		chunks := rec.ChunkNS[:0]
		rec = recorder.Request{
			Run: names[runID], Backend: str(backend), Role: str(role), Endpoint: str(endpoint),
			Status: int(status.Int64), Error: str(errCls),
			StartNS: start.Int64, FirstTokenNS: first.Int64, EndNS: end.Int64,
			PromptTokens: nullTokens(pt), CompletionTokens: nullTokens(ct),
		}
		if len(pair) > 0 {
			rec.PairID, rec.OutputSHA256, rec.Output = string(pair), string(sha), string(output)
		}
		rec.ChunkNS, err = appendChunks(chunks, start.Int64, blob)
		if err != nil {
			return fmt.Errorf("read requests: a request of run %s: %w", rec.Run, err)
		}
		if err := fn(&rec); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read requests: %w", err)
	}
	return nil
}

func nullTokens(v sql.NullInt64) int {
	if !v.Valid {
		return -1
	}
	return int(v.Int64)
}

// appendChunks decodes a chunk_ns blob (recorder.EncodeChunks' format)
// into dst without allocating when dst has room.
func appendChunks(dst []int64, start int64, blob []byte) ([]int64, error) {
	t := start
	for len(blob) > 0 {
		d, k := binary.Uvarint(blob)
		if k <= 0 || d > math.MaxInt64 {
			return dst, errors.New("malformed chunk_ns blob")
		}
		t += int64(d)
		dst = append(dst, t)
		blob = blob[k:]
	}
	return dst, nil
}
