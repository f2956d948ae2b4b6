//go:build !linux

package wire

import "net"

// RxReader is Linux-only; elsewhere data is stamped when read.
type RxReader struct{}

// NewRxReader returns nil outside Linux.
func NewRxReader(net.Conn) *RxReader { return nil }

// Read is never called: NewRxReader returns nil.
func (r *RxReader) Read(p []byte) (int, int64, error) { panic("unreachable") }

// RxConn is Linux-only.
type RxConn struct {
	net.Conn
	Last int64
}

// SkipNext is never called: NewRxConn returns nil.
func (c *RxConn) SkipNext([]byte) { panic("unreachable") }

// NewRxConn returns nil outside Linux.
func NewRxConn(net.Conn) *RxConn { return nil }

// Session is never called: NewRxReader returns nil.
func (r *RxReader) Session(func(fd uintptr) bool) error { panic("unreachable") }

// ReadFD is never called: NewRxReader returns nil.
func (r *RxReader) ReadFD(uintptr, []byte) (int, int64, error) { panic("unreachable") }

// FD is never called: NewRxReader returns nil.
func (r *RxReader) FD() uintptr { panic("unreachable") }

// Write is never called: NewRxReader returns nil.
func (r *RxReader) Write([]byte) (int, error) { panic("unreachable") }

// TimestampNS returns 0 outside Linux.
func TimestampNS([]byte) int64 { return 0 }
