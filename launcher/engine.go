package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/client"
	"go.uber.org/zap"
)

// Errors a caller can test for with errors.Is. Each is wrapped in a
// message that says what to do.
var (
	// ErrNoEngine: the Docker engine cannot be reached.
	ErrNoEngine = errors.New("cannot reach the Docker engine")
	// ErrEnginePermission: the engine's socket refused this user.
	ErrEnginePermission = errors.New("permission denied on the Docker engine socket")
	// ErrImageMissing: the image is not on the engine (and was not pulled).
	ErrImageMissing = errors.New("image not present")
	// ErrNoNvidiaRuntime: GPUs were requested but the engine has no nvidia runtime.
	ErrNoNvidiaRuntime = errors.New("no nvidia runtime")
	// ErrPortInUse: the host port to publish is taken.
	ErrPortInUse = errors.New("host port in use")
	// ErrContainerExists: a container with the spec's name already exists.
	ErrContainerExists = errors.New("container exists")
)

// Options configure an Engine.
type Options struct {
	// Logger logs progress; nil logs nothing.
	Logger *zap.Logger
	// LogOutput receives the containers' output while they start, each
	// line prefixed with "[backend] "; nil means os.Stderr.
	LogOutput io.Writer
	// PingTimeout bounds the first contact with the engine; default 10s.
	PingTimeout time.Duration
}

// Engine is a connection to a Docker engine.
type Engine struct {
	cli     *client.Client
	host    string
	version string
	log     *zap.Logger
	out     io.Writer
}

// Connect opens a connection to the engine the environment names
// (DOCKER_HOST, DOCKER_API_VERSION, DOCKER_CERT_PATH, DOCKER_TLS_VERIFY;
// default the local socket), negotiates the API version and checks that
// the engine answers.
func Connect(ctx context.Context, opts Options) (*Engine, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, kindErrorf(ErrNoEngine, "cannot use DOCKER_HOST %q: %v", os.Getenv("DOCKER_HOST"), err)
	}
	e := &Engine{cli: cli, host: cli.DaemonHost(), log: opts.Logger, out: opts.LogOutput}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.out == nil {
		e.out = os.Stderr
	}
	timeout := opts.PingTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Ping(pctx); err != nil {
		cli.Close()
		return nil, e.engineError(err)
	}
	v, err := cli.ServerVersion(pctx)
	if err != nil {
		cli.Close()
		return nil, e.engineError(err)
	}
	e.version = v.Version
	return e, nil
}

// engineError turns a failed contact with the engine into one sentence.
func (e *Engine) engineError(err error) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES) || strings.Contains(err.Error(), "permission denied") {
		return kindErrorf(ErrEnginePermission, "permission denied on the Docker engine socket %s: add this user to the docker group (then log in again) or run as root", e.host)
	}
	var cause string
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		cause = "it did not answer in time"
	case errors.As(err, &op):
		cause = op.Error()
	case strings.HasPrefix(e.host, "unix://"):
		path := strings.TrimPrefix(e.host, "unix://")
		if _, serr := os.Stat(path); serr != nil {
			cause = "there is no socket at " + path
		} else {
			cause = "nothing answers on " + path
		}
	default:
		cause = err.Error()
	}
	return kindErrorf(ErrNoEngine, "cannot reach the Docker engine at %s (%s); is dockerd running, and is DOCKER_HOST right?", e.host, cause)
}

// kindError is a message that errors.Is matches to one of the Err… kinds,
// so the sentinel's text does not have to appear in the sentence.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func kindErrorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Host is the engine's address, e.g. "unix:///var/run/docker.sock".
func (e *Engine) Host() string { return e.host }

// Version is the engine's version, e.g. "28.2.2".
func (e *Engine) Version() string { return e.version }

// Client is the underlying Docker API client, for callers (and tests)
// that need more than this package offers.
func (e *Engine) Client() *client.Client { return e.cli }

// Close releases the connection.
func (e *Engine) Close() error { return e.cli.Close() }

// local reports whether the engine runs on this machine, so a host port
// can be checked by binding it here.
func (e *Engine) local() bool {
	return strings.HasPrefix(e.host, "unix://") || strings.HasPrefix(e.host, "npipe://")
}
