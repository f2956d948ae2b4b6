package recorder

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.uber.org/zap"
)

// requestColumns is the number of columns insertRequestSQL binds, in the
// order fillArgs fills them.
const requestColumns = 33

const insertRequestSQL = `INSERT INTO requests(
	id, run_id, backend, role, pair_id, endpoint, model, stream,
	status, error, error_detail,
	start_ns, upstream_ns, first_byte_ns, first_token_ns, end_ns,
	prompt_tokens, completion_tokens, tokens_source,
	chunks, chunk_ns, finish_reason, output_sha256, prompt_sha256,
	bytes_in, bytes_out,
	client_start_ns, client_first_token_ns, client_end_ns,
	shadows_skipped, output_identical, common_prefix_chars, common_prefix_tokens
) VALUES (?,?,?,?,?,?,?,?, ?,?,?, ?,?,?,?,?, ?,?,?, ?,?,?,?,?, ?,?, ?,?,?, ?,?,?,?)`

// run is the writer goroutine. It waits on the queue only while it holds
// no records: the first record of a batch wakes it, and it then sleeps on a
// timer, so the records after the first are queued without waking anyone
// (a goroutine wake costs the data plane a few µs per request at one
// stream). A batch is written FlushInterval after its first record, or
// sooner when BatchSize records (or half the queue, if that is less) are
// queued, when Flush asks, or when the queue is closed; Submit, Flush and
// Close send the wake-up for those.
// Timing from the first record, not a free-running ticker, bounds how long
// any record waits while costing at most one transaction and one wake-up
// per FlushInterval under light load, and nothing when idle.
func (r *Recorder) run() {
	defer close(r.done)
	if r.opts.hold != nil {
		<-r.opts.hold
	}
	batch := make([]*Request, 0, r.opts.BatchSize)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case req, ok := <-r.queue:
			r.wakes.Add(1)
			if !ok {
				return
			}
			batch = append(batch, req)
			timer.Reset(r.opts.FlushInterval)
			select {
			case <-timer.C:
			case <-r.wake:
				timer.Stop()
			}
			r.wakes.Add(1)
		case <-r.wake: // Flush or Close with nothing held
			r.wakes.Add(1)
		}
		var closed bool
		batch, closed = r.drain(batch)
		if closed {
			return
		}
	}
}

// drain writes batch and everything queued now, at most BatchSize records
// per transaction, always ending with a write (an empty one publishes
// progress for Flush). It returns the emptied batch and whether the queue
// is closed.
func (r *Recorder) drain(batch []*Request) ([]*Request, bool) {
	flush := func() {
		r.writeBatch(batch)
		clear(batch) // let the records be collected
		batch = batch[:0]
	}
	for {
		select {
		case req, ok := <-r.queue:
			if !ok {
				flush()
				return batch, true
			}
			batch = append(batch, req)
			if len(batch) >= r.opts.BatchSize {
				flush()
			}
		default:
			flush()
			return batch, false
		}
	}
}

// writeBatch writes one transaction and publishes the progress. It holds
// wmu so EnsureRun/EndRun never interleave with a batch on the connection.
func (r *Recorder) writeBatch(batch []*Request) {
	if len(batch) > 0 {
		r.wmu.Lock()
		written, failed := r.insertBatch(batch)
		r.wmu.Unlock()
		r.written.Add(written)
		r.failed.Add(failed)
	}
	r.pmu.Lock()
	close(r.progress)
	r.progress = make(chan struct{})
	r.pmu.Unlock()
}

// insertBatch writes batch in one transaction. A row the database rejects
// (constraint) is counted and skipped; any other error abandons the whole
// transaction, because SQLite may already have rolled it back.
func (r *Recorder) insertBatch(batch []*Request) (written, failed int64) {
	ctx := context.Background()
	tx, err := r.wdb.BeginTx(ctx, nil)
	if err != nil {
		r.logFailure("begin transaction", err, len(batch))
		return 0, int64(len(batch))
	}
	abort := func(what string, err error) (int64, int64) {
		_ = tx.Rollback()
		// runs created in this transaction are gone with it
		clear(r.runIDs)
		r.logFailure(what, err, len(batch))
		return 0, int64(len(batch))
	}
	ins := tx.StmtContext(ctx, r.insertReq)
	var body *sql.Stmt
	for _, req := range batch {
		runID, err := r.runID(ctx, tx, req)
		if err != nil {
			return abort("create run", err)
		}
		r.fillArgs(req, runID)
		if _, err := ins.ExecContext(ctx, r.args...); err != nil {
			if isConstraint(err) {
				failed++
				r.logFailure("insert request "+req.ID, err, 1)
				continue
			}
			return abort("insert request", err)
		}
		written++
		if r.opts.StoreBodies && (req.Prompt != "" || req.Output != "") {
			if body == nil {
				body = tx.StmtContext(ctx, r.insertBody)
			}
			if _, err := body.ExecContext(ctx, req.ID, nullString(req.Prompt), nullString(req.Output)); err != nil {
				return abort("insert body", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return abort("commit", err)
	}
	return written, failed
}

// runID resolves a record's run name, creating a live run the first time a
// name is seen. Called with wmu held.
func (r *Recorder) runID(ctx context.Context, tx *sql.Tx, req *Request) (int64, error) {
	name := req.Run
	if name == "" {
		name = DefaultRun
	}
	if id, ok := r.runIDs[name]; ok {
		return id, nil
	}
	started := req.StartNS
	if started == 0 {
		started = time.Now().UnixNano()
	}
	id, err := ensureRun(ctx, tx, Run{Name: name, Kind: KindLive, StartedNS: started})
	if err != nil {
		return 0, err
	}
	r.runIDs[name] = id
	return id, nil
}

// fillArgs writes req's column values into r.args, mapping Go's "did not
// happen" values (0, "", -1 tokens) to NULL as the schema documents.
func (r *Recorder) fillArgs(req *Request, runID int64) {
	var chunks any
	if len(req.ChunkNS) > 0 {
		// SQLite copies bound blobs, so one buffer serves every row
		r.chunkBuf = AppendChunks(r.chunkBuf[:0], req.StartNS, req.ChunkNS)
		chunks = r.chunkBuf
	}
	stream := int64(0)
	if req.Stream {
		stream = 1
	}
	a := r.args
	a[0] = req.ID
	a[1] = runID
	a[2] = nullString(req.Backend)
	a[3] = req.Role
	a[4] = nullString(req.PairID)
	a[5] = nullString(req.Endpoint)
	a[6] = nullString(req.Model)
	a[7] = stream
	a[8] = nullInt(int64(req.Status))
	a[9] = nullString(req.Error)
	a[10] = nullString(req.ErrorDetail)
	a[11] = nullInt(req.StartNS)
	a[12] = nullInt(req.UpstreamNS)
	a[13] = nullInt(req.FirstByteNS)
	a[14] = nullInt(req.FirstTokenNS)
	a[15] = nullInt(req.EndNS)
	a[16] = nullTokens(req.PromptTokens)
	a[17] = nullTokens(req.CompletionTokens)
	a[18] = nullString(req.TokensSource)
	a[19] = int64(len(req.ChunkNS))
	a[20] = chunks
	a[21] = nullString(req.FinishReason)
	a[22] = nullString(req.OutputSHA256)
	a[23] = nullString(req.PromptSHA256)
	a[24] = req.BytesIn
	a[25] = req.BytesOut
	a[26] = nullInt(req.ClientStartNS)
	a[27] = nullInt(req.ClientFirstTokenNS)
	a[28] = nullInt(req.ClientEndNS)
	a[29] = nullInt(int64(req.ShadowsSkipped))
	a[30], a[31], a[32] = nil, nil, nil
	if g := req.Agreement; g != nil {
		identical := int64(0)
		if g.Identical {
			identical = 1
		}
		a[30], a[31], a[32] = identical, int64(g.PrefixChars), nullTokens(g.PrefixTokens)
	}
}

// logFailure logs write errors at most once a second; the counters carry
// the exact numbers.
func (r *Recorder) logFailure(what string, err error, records int) {
	now := time.Now()
	if now.Sub(r.lastFailLog) < time.Second {
		return
	}
	r.lastFailLog = now
	r.log.Error("recorder write failed", zap.String("op", what), zap.Int("records", records),
		zap.Int64("failed_total", r.failed.Load()+int64(records)), zap.Error(err))
}

func isConstraint(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrConstraint
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullInt(v int64) any {
	if v == 0 {
		return nil
	}
	return v
}

func nullFloat(v float64) any {
	if v == 0 {
		return nil
	}
	return v
}

func nullTokens(n int) any {
	if n < 0 {
		return nil
	}
	return int64(n)
}
