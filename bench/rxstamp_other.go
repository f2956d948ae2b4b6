//go:build !linux

package bench

import "net"

// stampConn has no kernel receive times outside Linux.
type stampConn struct {
	net.Conn
	last int64
}

func newStampConn(net.Conn) *stampConn { return nil }
