package launcher

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// TailLines is how many of a failed container's last log lines a
// StartError carries.
const TailLines = 50

// outMu serialises writes of whole lines from several containers.
var outMu sync.Mutex

// prefixWriter writes each complete line to out as "[name] line".
// Carriage returns (progress bars) end a line too; blank lines are dropped.
type prefixWriter struct {
	out    io.Writer
	prefix []byte
	buf    []byte
}

func newPrefixWriter(out io.Writer, name string) *prefixWriter {
	return &prefixWriter{out: out, prefix: []byte("[" + name + "] ")}
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexAny(w.buf, "\r\n")
		if i < 0 {
			break
		}
		w.emit(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Flush writes a last unterminated line.
func (w *prefixWriter) Flush() {
	w.emit(w.buf)
	w.buf = nil
}

func (w *prefixWriter) emit(line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	outMu.Lock()
	defer outMu.Unlock()
	b := make([]byte, 0, len(w.prefix)+len(line)+1)
	b = append(append(append(b, w.prefix...), line...), '\n')
	w.out.Write(b) //nolint:errcheck // best effort: logs must not fail a launch
}

// streamLogs follows a container's output to e.out with a "[backend] "
// prefix until ctx is cancelled or the container stops; the returned
// channel is closed when it is done.
func (e *Engine) streamLogs(ctx context.Context, id, backend string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc, err := e.cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
		if err != nil {
			return
		}
		defer rc.Close()
		w := newPrefixWriter(e.out, backend)
		stdcopy.StdCopy(w, w, rc) //nolint:errcheck // ends with ctx or the container
		w.Flush()
	}()
	return done
}

// tail returns the container's last n log lines (stdout and stderr).
func (e *Engine) tail(ctx context.Context, id string, n int) []string {
	rc, err := e.cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
	if err != nil {
		return []string{"(logs unavailable: " + err.Error() + ")"}
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil && buf.Len() == 0 {
		return []string{"(logs unavailable: " + err.Error() + ")"}
	}
	var lines []string
	for _, l := range strings.FieldsFunc(buf.String(), func(r rune) bool { return r == '\n' || r == '\r' }) {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
