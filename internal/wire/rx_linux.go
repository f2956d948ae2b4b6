package wire

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel receive timestamps. A read's time taken with time.Now() after it
// returns includes the reader's own scheduling delay: with hundreds of
// streams whose tokens arrive in the same engine step, a goroutine may read
// its chunk milliseconds after it arrived. On Linux, recvmsg with
// SO_TIMESTAMPNS reports when the kernel received the data, so that delay
// is not counted as backend latency.

// RxReader reads from a TCP socket and reports the kernel receive time.
type RxReader struct {
	// oob takes one SCM_TIMESTAMPNS (unix.CmsgSpace(16) is 32 bytes or
	// less); in the reader, not in an allocation of its own that is cold
	// by the next chunk
	oob [32]byte
	c   net.Conn
	raw syscall.RawConn
	w   rxWrite
	rd  rxRead
}

// rxRead is Read's state, bound once like rxWrite's; one reader at a time.
type rxRead struct {
	p    []byte
	n    int
	rxNS int64
	err  error
	fn   func(fd uintptr) bool
}

// rxWrite is a write's state, which the callback given to the RawConn
// shares with Write. Bound once per connection, so that a
// write allocates nothing: a closure over a write's locals escapes to the
// heap through the RawConn interface, three allocations per chunk. One
// writer at a time, as for any net.Conn write that must not interleave.
type rxWrite struct {
	p       []byte
	written int
	err     error
	wait    func(fd uintptr) bool // until written or failed
}

// NewRxReader enables kernel receive timestamps on c; nil if unsupported.
func NewRxReader(c net.Conn) *RxReader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return nil
	}
	r := &RxReader{c: c, raw: raw}
	rd := &r.rd
	rd.fn = func(fd uintptr) bool {
		rd.n, rd.rxNS, rd.err = r.ReadFD(fd, rd.p)
		return rd.err != ErrWouldBlock
	}
	w := &r.w
	w.wait = func(fd uintptr) bool {
		w.err = writeFrom(fd, w.p, &w.written)
		if w.err == unix.EAGAIN {
			w.err = nil
			return false // wait until writable
		}
		return true
	}
	return r
}

// start readies the write state for p; end returns what was written and
// drops the reference to p.
func (w *rxWrite) start(p []byte) { w.p, w.written, w.err = p, 0, nil }

func (w *rxWrite) end() (int, error) {
	n, err := w.written, w.err
	w.p, w.err = nil, nil
	return n, err
}

// Read fills p and returns the kernel's receive time of the data in Unix
// ns (0 when the kernel gave none).
func (r *RxReader) Read(p []byte) (n int, rxNS int64, err error) {
	if len(p) == 0 {
		return 0, 0, nil
	}
	rd := &r.rd
	rd.p = p
	err = r.raw.Read(rd.fn)
	n, rxNS = rd.n, rd.rxNS
	if err == nil {
		err = rd.err
	}
	rd.p, rd.err = nil, nil
	return n, rxNS, err
}

// FD is the socket's descriptor, for a Loop. It stays valid until the
// connection is closed.
func (r *RxReader) FD() uintptr {
	var s uintptr
	_ = r.raw.Control(func(fd uintptr) { s = fd })
	return s
}

// Session runs f under one raw read of the socket: f gets the descriptor
// and reads it with ReadFD; returning false waits until the socket is
// readable (or its deadline passes) and calls f again. Within a session
// the wait needs no failed read first, which a Read per call cannot
// avoid: Go's poller resets the readiness flag at the start of each read,
// so every Read after data must try recvmsg once more and get EAGAIN.
func (r *RxReader) Session(f func(fd uintptr) bool) error { return r.raw.Read(f) }

// ReadFD is one recvmsg on fd inside a Session: it returns ErrWouldBlock
// (not a wait) when nothing is there.
func (r *RxReader) ReadFD(fd uintptr, p []byte) (n int, rxNS int64, err error) {
	var oobn int
	n, oobn, err = recvmsg(fd, p, r.oob[:])
	if err == unix.EAGAIN {
		return 0, 0, ErrWouldBlock
	}
	if err != nil {
		return 0, 0, err
	}
	if n == 0 && len(p) > 0 {
		return 0, 0, io.EOF
	}
	return n, TimestampNS(r.oob[:oobn]), nil
}

// The socket calls below are raw system calls, made without the runtime's
// entersyscall/exitsyscall. The descriptors are non-blocking, so a call
// never waits, and skipping entersyscall skips more than its cost: the
// first entersyscall after the whole process was idle wakes sysmon (a
// futex wake, then a burst of 20 µs sleeps on another thread), on the
// critical path of every event of a lightly loaded proxy.

// recvmsg is one recvmsg(2) into p with control messages into oob.
func recvmsg(fd uintptr, p, oob []byte) (n, oobn int, err error) {
	if !rawSyscalls {
		for {
			n, oobn, _, _, err = unix.Recvmsg(int(fd), p, oob, 0)
			if err != unix.EINTR {
				return n, oobn, err
			}
		}
	}
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.Iovlen = 1
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	for {
		r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, 0, e
		}
		return int(r), int(msg.Controllen), nil
	}
}

// Write writes all of p to the socket with raw write(2) calls, waiting in
// the runtime's poller only when the send buffer is full.
func (r *RxReader) Write(p []byte) (int, error) {
	if !rawSyscalls {
		return r.c.Write(p)
	}
	r.w.start(p)
	err := r.raw.Write(r.w.wait)
	written, werr := r.w.end()
	if werr != nil {
		err = os.NewSyscallError("write", werr)
	}
	if err != nil { // as net.Conn.Write reports it
		return written, &net.OpError{Op: "write", Net: "tcp", Err: err}
	}
	return written, nil
}

// writeFrom writes p[*written:] with write(2) calls, advancing *written,
// until all of p is written or a call fails; a full send buffer is
// unix.EAGAIN.
func writeFrom(fd uintptr, p []byte, written *int) error {
	for *written < len(p) {
		n, e := writeFD(fd, p[*written:])
		if e == unix.EINTR {
			continue
		}
		if e != nil {
			return e
		}
		*written += n
	}
	return nil
}

// writeFD is one write(2) of p, which must not be empty.
func writeFD(fd uintptr, p []byte) (int, error) {
	if !rawSyscalls {
		return unix.Write(int(fd), p)
	}
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// TimestampNS finds SCM_TIMESTAMPNS in a recvmsg control message buffer
// and returns it in Unix ns (0 if absent), without allocating as
// unix.ParseSocketControlMessage does.
func TimestampNS(oob []byte) int64 {
	const hdr = int(unsafe.Sizeof(unix.Cmsghdr{}))
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && l >= hdr+16 {
			d := oob[unix.CmsgLen(0):]
			sec := int64(binary.NativeEndian.Uint64(d[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(d[8:16]))
			return sec*1e9 + nsec
		}
		oob = oob[unix.CmsgSpace(l-unix.CmsgLen(0)):]
	}
	return 0
}

// RxConn is a connection whose reads record the kernel receive time of
// the last data read in Last.
type RxConn struct {
	net.Conn
	rx *RxReader
	// Last is the kernel receive time of the last bytes read, Unix ns; 0 unknown.
	Last  int64
	skip  []byte     // sent ahead of the writer that owns the connection (SkipNext)
	dmu   sync.Mutex // SetReadDeadline's, so armed is what the connection has
	armed int64      // the read deadline set on the connection, Unix ns; 0 none
}

// SkipNext says that b, which the owner of the connection (an HTTP
// server) will write next, has already been sent by someone who could send
// it sooner: Write drops it from the front of what comes. A write that
// does not start with it is passed on whole.
func (c *RxConn) SkipNext(b []byte) { c.skip = b }

// NewRxConn wraps c; nil when kernel timestamps are unavailable.
func NewRxConn(c net.Conn) *RxConn {
	rx := NewRxReader(c)
	if rx == nil {
		return nil
	}
	return &RxConn{Conn: c, rx: rx}
}

// Write writes p with raw system calls (see RxReader.Write).
func (c *RxConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	k := 0
	if len(c.skip) > 0 {
		for k < len(p) && k < len(c.skip) && p[k] == c.skip[k] {
			k++
		}
		if k == len(p) || k == len(c.skip) {
			c.skip = c.skip[k:]
		} else {
			c.skip, k = nil, 0
		}
		if k == len(p) {
			return k, nil
		}
	}
	n, err := c.rx.Write(p[k:])
	return k + n, err
}

// clearKeep: SetReadDeadline leaves a deadline at least this far ahead in
// place when asked to clear it.
const clearKeep = 60 * time.Second

// SetReadDeadline sets the read deadline as net.Conn's does, but moves the
// runtime's timer only when it must. An HTTP server moves a keep-alive
// connection's deadline twice per request: to the idle timeout before it
// waits for the next request, and off again when its first byte arrives,
// on that request's way to the backend. Each move is a runtime timer update,
// 2-3 µs of cold memory on a VM where that is dear (docs/benchmarks.md, "A
// paravirtualised AMD VM"). So a deadline already set is kept when the new
// one is later by at most IdleSlack of its distance (an idle connection is
// closed up to a second early), and a clear leaves in place a deadline at
// least clearKeep ahead: reading a request that follows the last one on its
// connection may then take a minute at least, where it had no limit before.
func (c *RxConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	var want int64 // 0: none
	if t.IsZero() {
		if c.armed == 0 || c.armed-time.Now().UnixNano() >= int64(clearKeep) {
			return nil
		}
	} else {
		want = t.UnixNano()
		if c.armed != 0 && c.armed <= want && want-c.armed <= int64(IdleSlack(time.Until(t))) {
			return nil
		}
	}
	err := c.Conn.SetReadDeadline(t)
	if err == nil {
		c.armed = want
	}
	return err
}

// SetDeadline sets both deadlines; the read one as SetReadDeadline does.
func (c *RxConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

func (c *RxConn) Read(p []byte) (int, error) {
	n, ts, err := c.rx.Read(p)
	if n > 0 {
		c.Last = ts
	}
	return n, err
}
