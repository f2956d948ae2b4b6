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
// a burst of events costs a wake-up of one goroutine per loopSlice
// streams, which then calls Ready for each socket in the order the kernel
// saw them.
//
// Sockets are registered edge-triggered: Ready must read until the socket
// is empty (or a short read shows it was emptied), as a Session step does.
// Ready may be called spuriously: after Remove, for a reused slot, or again
// for bytes an earlier call read; it must treat a read that finds nothing
// as normal.
//
// The streams that NewLoop's first picks go before every stream still
// queued: a stream waiting for its first token, or for the end of its
// response, should not queue behind a burst of other streams' tokens,
// which the kernel lists first when the backend writes new requests'
// tokens last.
type Loop[T any] struct {
	epfd   int
	kick   int // eventfd in the set: a write makes the set readable again
	file   *os.File
	raw    syscall.RawConn
	ready  func(*T)
	first  func(*T) bool
	closed atomic.Bool

	mu      sync.Mutex
	running bool    // Run has started: it closes kick when it returns
	slots   []*T    // registered streams by slot
	free    []int32 // unused slots
	// the loop goroutine's own: streams of the events just taken, and
	// streams waiting for their turn from queue[head:]
	fresh []*T
	queue []*T
	head  int
	evs   []unix.EpollEvent
}

// NewLoop creates an epoll set; Run must be called to deliver events.
// first (may be nil) picks the streams served ahead of the queue; it runs on
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
	kick, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	kev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, kick, &kev); err != nil {
		unix.Close(epfd)
		unix.Close(kick)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// a non-blocking descriptor given to os.NewFile joins the runtime's poller
	f := os.NewFile(uintptr(epfd), "epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		unix.Close(kick)
		return nil, err
	}
	return &Loop[T]{epfd: epfd, kick: kick, file: f, raw: raw, ready: ready, first: first, evs: make([]unix.EpollEvent, 256)}, nil
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
//
// Each turn takes every event the set holds, serves the streams first
// picks at once, and queues the rest, of which it serves at most
// loopSlice before it yields: a burst of a thousand streams' tokens is
// several milliseconds of work, and the goroutines the runtime's poller
// readied meanwhile (a new request, a stream that ended and its client's
// next request) would otherwise wait for the whole burst. To yield, the
// loop writes its eventfd, which makes the set readable again, and waits
// in the runtime's poller like any goroutine.
func (l *Loop[T]) Run() error {
	l.mu.Lock()
	if l.closed.Load() {
		l.mu.Unlock()
		return nil
	}
	l.running = true
	l.mu.Unlock()
	// closed here rather than in Close, so that a kick never writes to a
	// descriptor number that Close freed and something else reused
	defer unix.Close(l.kick)
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
			l.mu.Lock()
			for _, ev := range l.evs[:n] {
				if ev.Fd >= 0 && int(ev.Fd) < len(l.slots) {
					if s := l.slots[ev.Fd]; s != nil {
						l.fresh = append(l.fresh, s)
					}
				}
			}
			l.mu.Unlock()
			if n < len(l.evs) {
				break
			}
		}
		for i, s := range l.fresh {
			if l.first != nil && l.first(s) {
				l.ready(s)
			} else {
				l.queue = append(l.queue, s)
			}
			l.fresh[i] = nil
		}
		l.fresh = l.fresh[:0]
		end := min(l.head+loopSlice, len(l.queue))
		for i := l.head; i < end; i++ {
			s := l.queue[i]
			l.queue[i] = nil
			l.ready(s)
		}
		l.head = end
		if l.head == len(l.queue) {
			l.queue, l.head = l.queue[:0], 0
			return false // empty: wait in the runtime's poller
		}
		if l.head >= len(l.queue)/2 {
			n := copy(l.queue, l.queue[l.head:])
			clear(l.queue[n:])
			l.queue, l.head = l.queue[:n], 0
		}
		one := [8]byte{1}
		writeFD(uintptr(l.kick), one[:]) // cannot fail short of 2⁶⁴ kicks
		return false                     // yield; the kick brings the loop back
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
	l.mu.Lock()
	again := l.closed.Swap(true)
	running := l.running
	l.mu.Unlock()
	err := l.file.Close()
	if !again && !running {
		unix.Close(l.kick)
	}
	return err
}

// loopSlice is how many queued streams a loop serves between yields. At
// 1,000 streams, yielding put a new request's way to the backend at
// 0.6–0.7× nginx's (1.1–1.2× without); slices of 16, 64 and 128 were level
// with 32 at p50, and 32 had the shortest request-way p99
// (docs/benchmarks.md, "Yielding between slices").
const loopSlice = 32

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

// Hold runs f with the socket's descriptor held open: a Close meanwhile
// waits until f returns, so the number cannot be closed and given to
// another connection while f, or a goroutine that f waits for, writes to
// it with TryWriteFD. A stream takes one reference for its stay in an
// event loop instead of one per chunk; the runtime's reference count per
// write touched three structures that had gone cold since the stream's
// last token (docs/benchmarks.md, "Fewer cold lines per chunk").
func (c *RxConn) Hold(f func(fd uintptr)) error { return c.rx.raw.Control(f) }

// TryWriteFD is one non-blocking write of p to a descriptor that Hold
// keeps open: it returns how much the socket took and ErrWouldBlock when
// its send buffer is full.
func TryWriteFD(fd uintptr, p []byte) (int, error) {
	written := 0
	err := writeFrom(fd, p, &written)
	switch {
	case err == unix.EAGAIN:
		return written, ErrWouldBlock
	case err != nil:
		return written, os.NewSyscallError("write", err)
	}
	return written, nil
}
