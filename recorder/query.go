package recorder

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"
)

// OpenReadOnly opens an existing abproxy database for reading, as `abproxy
// report` does, while a Recorder may still be writing to it. It fails with
// one clear sentence when the file is missing, is not an abproxy database
// (errors.Is ErrNotDatabase) or has a schema version this build cannot read
// (errors.Is ErrSchemaVersion).
func OpenReadOnly(path string) (*sql.DB, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no such database file: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s: is a directory, not a database file", path)
	}
	db := openDB(dsn(path, "mode=ro", "_busy_timeout="+strconv.Itoa(int(busyTimeout/time.Millisecond))), nil)
	v, err := readVersion(context.Background(), db, path)
	switch {
	case err != nil:
	case v == 0:
		err = notDatabase(path, "it has no tables")
	case v > SchemaVersion:
		err = tooNew(path, v)
	case v < SchemaVersion:
		err = &fileError{fmt.Sprintf("%s: schema version %d is older than this abproxy reads (%d); open it once with a writing command such as `abproxy serve` to upgrade it",
			path, v, SchemaVersion), ErrSchemaVersion}
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// ListRuns returns every run, oldest first.
func ListRuns(db *sql.DB) ([]Run, error) {
	rows, err := db.Query(`SELECT id, name, kind, backend, scenario, concurrency, request_rate,
		started_ns, ended_ns, meta FROM runs ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	var runs []Run
	for rows.Next() {
		var (
			run                     Run
			backend, scenario, meta sql.NullString
			conc, started, ended    sql.NullInt64
			rate                    sql.NullFloat64
		)
		if err := rows.Scan(&run.ID, &run.Name, &run.Kind, &backend, &scenario, &conc, &rate,
			&started, &ended, &meta); err != nil {
			return nil, fmt.Errorf("list runs: %w", err)
		}
		run.Backend, run.Scenario = backend.String, scenario.String
		run.Concurrency = int(conc.Int64)
		run.RequestRate = rate.Float64
		run.StartedNS, run.EndedNS = started.Int64, ended.Int64
		if meta.Valid {
			run.Meta = json.RawMessage(meta.String)
		}
		runs = append(runs, run)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	return runs, nil
}

// Query selects the requests ScanRequests visits.
type Query struct {
	// Where is a SQL condition over the requests table's columns with ?
	// placeholders, e.g. "run_id = ? AND role = 'primary'" or
	// "run_id IN (SELECT id FROM runs WHERE name = ?)". "" selects all.
	Where string
	Args  []any // values for the placeholders in Where
}

// ScanRequests calls fn for each request matching q, in insertion order,
// streaming rows so memory stays flat however large the run. Each call gets
// a fresh *Request that fn may keep. Prompt and Output are filled from the
// bodies table when present. Scanning stops at the first error from fn,
// which is returned as is.
func ScanRequests(ctx context.Context, db *sql.DB, q Query, fn func(*Request) error) error {
	runs, err := ListRuns(db)
	if err != nil {
		return err
	}
	names := make(map[int64]string, len(runs))
	for _, r := range runs {
		names[r.ID] = r.Name
	}
	query := `SELECT id, run_id, backend, role, pair_id, endpoint, model, stream,
		status, error, error_detail,
		start_ns, upstream_ns, first_byte_ns, first_token_ns, end_ns,
		prompt_tokens, completion_tokens, tokens_source,
		chunks, chunk_ns, finish_reason, output_sha256, prompt_sha256,
		bytes_in, bytes_out,
		client_start_ns, client_first_token_ns, client_end_ns,
		shadows_skipped, output_identical, common_prefix_chars, common_prefix_tokens,
		bodies.prompt, bodies.output
		FROM requests LEFT JOIN bodies ON bodies.request_id = requests.id`
	if q.Where != "" {
		query += " WHERE " + q.Where
	}
	query += " ORDER BY requests.rowid"
	rows, err := db.QueryContext(ctx, query, q.Args...)
	if err != nil {
		return fmt.Errorf("scan requests: %w", err)
	}
	defer rows.Close()
	var (
		runID, stream, chunks, bytesIn, bytesOut               int64
		backend, pairID, endpoint, model                       sql.NullString
		errClass, errDetail, tokSrc, finish, outSHA, promptSHA sql.NullString
		prompt, output                                         sql.NullString
		status, startNS, upNS, fbNS, ftNS, endNS               sql.NullInt64
		promptTok, complTok, cStart, cFirst, cEnd              sql.NullInt64
		skipped, identical, prefixChars, prefixTokens          sql.NullInt64
		blob                                                   []byte
	)
	for rows.Next() {
		req := new(Request)
		if err := rows.Scan(&req.ID, &runID, &backend, &req.Role, &pairID, &endpoint, &model, &stream,
			&status, &errClass, &errDetail,
			&startNS, &upNS, &fbNS, &ftNS, &endNS,
			&promptTok, &complTok, &tokSrc,
			&chunks, &blob, &finish, &outSHA, &promptSHA,
			&bytesIn, &bytesOut,
			&cStart, &cFirst, &cEnd,
			&skipped, &identical, &prefixChars, &prefixTokens,
			&prompt, &output); err != nil {
			return fmt.Errorf("scan requests: %w", err)
		}
		req.Run = names[runID]
		req.Backend, req.PairID, req.Endpoint, req.Model = backend.String, pairID.String, endpoint.String, model.String
		req.Stream = stream != 0
		req.Status = int(status.Int64)
		req.Error, req.ErrorDetail = errClass.String, errDetail.String
		req.StartNS, req.UpstreamNS, req.FirstByteNS, req.FirstTokenNS, req.EndNS =
			startNS.Int64, upNS.Int64, fbNS.Int64, ftNS.Int64, endNS.Int64
		req.PromptTokens, req.CompletionTokens = tokens(promptTok), tokens(complTok)
		req.TokensSource, req.FinishReason = tokSrc.String, finish.String
		req.OutputSHA256, req.PromptSHA256 = outSHA.String, promptSHA.String
		req.BytesIn, req.BytesOut = bytesIn, bytesOut
		req.ClientStartNS, req.ClientFirstTokenNS, req.ClientEndNS = cStart.Int64, cFirst.Int64, cEnd.Int64
		req.Prompt, req.Output = prompt.String, output.String
		req.ShadowsSkipped = int(skipped.Int64)
		if identical.Valid {
			req.Agreement = &Agreement{Identical: identical.Int64 == 1, PrefixChars: int(prefixChars.Int64), PrefixTokens: tokens(prefixTokens)}
		}
		if req.ChunkNS, err = DecodeChunks(req.StartNS, blob); err != nil {
			return fmt.Errorf("scan requests: request %s: %w", req.ID, err)
		}
		if int64(len(req.ChunkNS)) != chunks {
			return fmt.Errorf("scan requests: request %s: chunks is %d but chunk_ns holds %d times", req.ID, chunks, len(req.ChunkNS))
		}
		if err := fn(req); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("scan requests: %w", err)
	}
	return nil
}

func tokens(v sql.NullInt64) int {
	if !v.Valid {
		return -1
	}
	return int(v.Int64)
}
