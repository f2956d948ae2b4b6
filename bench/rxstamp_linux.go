package bench

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Receive timestamps. A read's time taken with time.Now() after it returns
// includes the client's own scheduling delay: with thousands of streams on
// a small machine a goroutine can wait milliseconds for its turn after its
// data arrived. On Linux the kernel can stamp each TCP segment as it arrives
// (SO_TIMESTAMPNS); recvmsg then reports the arrival time of the last
// segment it copied. bench uses that as the read's time, so its timestamps
// stay those of the network even when the client is busy.

// stampConn is a TCP connection whose reads carry kernel receive times.
type stampConn struct {
	*net.TCPConn
	rc   syscall.RawConn
	msg  syscall.Msghdr
	iov  syscall.Iovec
	oob  [64]byte
	last int64 // kernel receive time of the last read, Unix ns; 0 unknown
}

// newStampConn enables receive timestamps on c; it returns nil when the
// kernel refuses, and the caller keeps the plain connection.
func newStampConn(c net.Conn) *stampConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return nil
	}
	return &stampConn{TCPConn: tc, rc: rc}
}

func (c *stampConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n, oobn int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		c.iov.Base = &p[0]
		c.iov.SetLen(len(p))
		c.msg.Iov = &c.iov
		c.msg.Iovlen = 1
		c.msg.Control = &c.oob[0]
		c.msg.SetControllen(len(c.oob))
		r, _, e := syscall.Syscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&c.msg)), 0)
		if e == syscall.EAGAIN {
			return false
		}
		if e == syscall.EINTR {
			return false
		}
		n, errno = int(r), e
		oobn = int(c.msg.Controllen)
		return true
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("recvmsg", errno)}
	}
	if n == 0 {
		return 0, io.EOF
	}
	c.last = parseStamp(c.oob[:oobn])
	return n, nil
}

// parseStamp finds the SCM_TIMESTAMPNS control message without allocating.
func parseStamp(b []byte) int64 {
	const hdr = int(unsafe.Sizeof(syscall.Cmsghdr{}))
	for len(b) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < hdr || l > len(b) {
			return 0
		}
		if h.Level == syscall.SOL_SOCKET && h.Type == syscall.SCM_TIMESTAMPNS && l >= hdr+int(unsafe.Sizeof(syscall.Timespec{})) {
			ts := (*syscall.Timespec)(unsafe.Pointer(&b[hdr]))
			return ts.Nano()
		}
		step := (l + int(unsafe.Sizeof(uintptr(0))) - 1) &^ (int(unsafe.Sizeof(uintptr(0))) - 1)
		if step >= len(b) {
			return 0
		}
		b = b[step:]
	}
	return 0
}
