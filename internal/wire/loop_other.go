//go:build !linux

package wire

import "errors"

// Loop is Linux-only (epoll); NewLoop fails elsewhere and callers keep a
// goroutine per stream.
type Loop[T any] struct{}

// NewLoop fails outside Linux.
func NewLoop[T any](func(*T), func(*T) bool) (*Loop[T], error) {
	return nil, errors.New("event loop needs Linux")
}

// Add is never called: NewLoop fails.
func (l *Loop[T]) Add(uintptr, *T) (int32, error) { panic("unreachable") }

// Remove is never called: NewLoop fails.
func (l *Loop[T]) Remove(uintptr, int32) { panic("unreachable") }

// Run is never called: NewLoop fails.
func (l *Loop[T]) Run() error { panic("unreachable") }

// Close is never called: NewLoop fails.
func (l *Loop[T]) Close() error { panic("unreachable") }

// Hold is never called: NewRxConn returns nil.
func (c *RxConn) Hold(func(fd uintptr)) error { panic("unreachable") }

// TryWriteFD is never called: NewRxConn returns nil.
func TryWriteFD(uintptr, []byte) (int, error) { panic("unreachable") }
