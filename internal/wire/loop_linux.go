package wire

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Loop hands the readiness of many sockets to one goroutine. A goroutine
// per stream that waits in the runtime's poller costs a park, a wake-up
// and a context switch per event, and touches a cold goroutine stack each
// time; with a thousand streams whose tokens arrive in the same engine
// step, that is a large share of a proxy's CPU. A Loop is an epoll set of
// its own, itself waited on in the runtime's poller (epoll sets nest), so
// a burst of events costs one wake-up of one goroutine, which then calls
// Ready for each socket in the order the kernel saw them.
//
// Sockets are registered edge-triggered: Ready must read until the socket
// is empty (or a short read shows it was emptied), as a Session step does.
// Ready may be called spuriously, after Remove or for a reused slot, and
// must treat a read that finds nothing as normal.
//
// Within one batch, the streams that NewLoop's first picks go before the
// rest: a stream waiting for its first token should not queue behind a
// burst of other streams' tokens, which the kernel lists first when the
// backend writes new requests' tokens last.
type Loop[T any] struct {
	epfd   int
	file   *os.File
	raw    syscall.RawConn
	ready  func(*T)
	first  func(*T) bool
	closed atomic.Bool

	mu    sync.Mutex
	slots []*T    // registered streams by slot
	free  []int32 // unused slots
	batch []*T    // the loop goroutine's copy of one batch's streams
	evs   []unix.EpollEvent
}

// NewLoop creates an epoll set; Run must be called to deliver events.
// first (may be nil) picks the streams a batch serves first; it runs on
// the loop goroutine without any lock of the stream's, so it must read
// only what is safe to read concurrently.
func NewLoop[T any](ready func(*T), first func(*T) bool) (*Loop[T], error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	// a non-blocking descriptor given to os.NewFile joins the runtime's poller
	f := os.NewFile(uintptr(epfd), "epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Loop[T]{epfd: epfd, file: f, raw: raw, ready: ready, first: first, evs: make([]unix.EpollEvent, 256)}, nil
}

// Add registers fd for reading; s's Ready runs on the loop goroutine when
// bytes (or the peer's close) arrive. If the socket is readable already,
// Ready runs at once. The returned slot is Remove's argument.
func (l *Loop[T]) Add(fd uintptr, s *T) (int32, error) {
	l.mu.Lock()
	var slot int32
	if n := len(l.free); n > 0 {
		slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		slot = int32(len(l.slots))
		l.slots = append(l.slots, nil)
	}
	l.slots[slot] = s
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: slot}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		l.release(slot)
		return 0, os.NewSyscallError("epoll_ctl", err)
	}
	return slot, nil
}

// Remove unregisters fd, which must still be open. Ready may still run
// once for the stream afterwards if its event was already taken.
func (l *Loop[T]) Remove(fd uintptr, slot int32) {
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	l.release(slot)
}

func (l *Loop[T]) release(slot int32) {
	l.mu.Lock()
	l.slots[slot] = nil
	l.free = append(l.free, slot)
	l.mu.Unlock()
}

// Run delivers events until Close. It returns nil after Close.
func (l *Loop[T]) Run() error {
	var werr error
	err := l.raw.Read(func(fd uintptr) bool {
		for {
			n, err := epollWait(fd, l.evs)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				werr = os.NewSyscallError("epoll_wait", err)
				return true
			}
			if n == 0 {
				return false // empty: wait in the runtime's poller
			}
			l.mu.Lock()
			l.batch = l.batch[:0]
			for _, ev := range l.evs[:n] {
				if int(ev.Fd) < len(l.slots) {
					l.batch = append(l.batch, l.slots[ev.Fd])
				}
			}
			l.mu.Unlock()
			if l.first != nil && len(l.batch) > 1 {
				for i, s := range l.batch {
					if s != nil && l.first(s) {
						l.ready(s)
						l.batch[i] = nil
					}
				}
			}
			for i, s := range l.batch {
				if s != nil {
					l.ready(s)
				}
				l.batch[i] = nil
			}
			if n < len(l.evs) {
				return false
			}
		}
	})
	if l.closed.Load() {
		return nil
	}
	if err == nil {
		err = werr
	}
	return err
}

// Close stops Run. Registered descriptors are not closed.
func (l *Loop[T]) Close() error {
	l.closed.Store(true)
	return l.file.Close()
}

// epollWait is a non-blocking epoll_wait.
func epollWait(epfd uintptr, evs []unix.EpollEvent) (int, error) {
	if !rawSyscalls {
		return unix.EpollWait(int(epfd), evs, 0)
	}
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, epfd, uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// TryWrite is one non-blocking write(2) of p: it returns how much the
// socket took and ErrWouldBlock when its send buffer is full.
func (r *RxReader) TryWrite(p []byte) (int, error) {
	r.w.start(p)
	err := r.raw.Control(r.w.try)
	written, werr := r.w.end()
	switch {
	case err != nil:
		return written, err
	case werr == unix.EAGAIN:
		return written, ErrWouldBlock
	case werr != nil:
		return written, os.NewSyscallError("write", werr)
	}
	return written, nil
}

// TryWrite is RxReader.TryWrite on the connection.
func (c *RxConn) TryWrite(p []byte) (int, error) { return c.rx.TryWrite(p) }
