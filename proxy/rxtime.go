package proxy

import (
	"net"

	"github.com/abproxy/abproxy/internal/wire"
)

// rxListener wraps accepted TCP connections so that start_ns is when the
// request's last bytes arrived rather than when a busy scheduler got to
// the handler (see wire.RxReader).
type rxListener struct{ net.Listener }

func (l rxListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if rc := wire.NewRxConn(c); rc != nil {
		return rc, nil
	}
	return c, nil
}

func wrapListener(ln net.Listener) net.Listener { return rxListener{ln} }

// arrivalNS is the kernel receive time of the last bytes read from c, or 0.
func arrivalNS(c net.Conn) int64 {
	if rc, ok := c.(*wire.RxConn); ok {
		return rc.Last
	}
	return 0
}
