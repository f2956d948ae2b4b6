package proxy

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux the upstream connections read with recvmsg and SO_TIMESTAMPNS,
// so each chunk is stamped with the time the kernel received it rather
// than the time a goroutine got around to reading it. Under load (hundreds
// of streams whose tokens arrive in the same engine step) the difference
// is milliseconds of scheduling delay that would otherwise be counted as
// backend latency.

// rxReader reads from a TCP socket and remembers the kernel receive time.
type rxReader struct {
	raw syscall.RawConn
	oob []byte
}

// newRxReader enables kernel receive timestamps on c; nil if unsupported.
func newRxReader(c net.Conn) *rxReader {
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
	return &rxReader{raw: raw, oob: make([]byte, unix.CmsgSpace(16))}
}

// read fills p and returns the kernel's receive time of the data in Unix
// ns (0 when the kernel gave none).
func (r *rxReader) read(p []byte) (n int, rxNS int64, err error) {
	var oobn int
	var rerr error
	err = r.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), p, r.oob, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, 0, err
	}
	if rerr != nil {
		return 0, 0, rerr
	}
	if n == 0 && len(p) > 0 {
		return 0, 0, io.EOF
	}
	return n, parseTimestampNS(r.oob[:oobn]), nil
}

// parseTimestampNS finds SCM_TIMESTAMPNS in a control message buffer
// without allocating (unix.ParseSocketControlMessage allocates).
func parseTimestampNS(oob []byte) int64 {
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

// rxConn is a client connection whose reads record the kernel receive
// time, so start_ns is when the request's last bytes arrived rather than
// when a busy scheduler got to the handler.
type rxConn struct {
	net.Conn
	rx   *rxReader
	rxNS int64
}

func (c *rxConn) Read(p []byte) (int, error) {
	n, ts, err := c.rx.read(p)
	if n > 0 {
		c.rxNS = ts
	}
	return n, err
}

// rxListener wraps accepted TCP connections in rxConn.
type rxListener struct{ net.Listener }

func (l rxListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if rx := newRxReader(c); rx != nil {
		return &rxConn{Conn: c, rx: rx}, nil
	}
	return c, nil
}

func wrapListener(ln net.Listener) net.Listener { return rxListener{ln} }

// arrivalNS is the kernel receive time of the last bytes read from c, or 0.
func arrivalNS(c net.Conn) int64 {
	if rc, ok := c.(*rxConn); ok {
		return rc.rxNS
	}
	return 0
}
