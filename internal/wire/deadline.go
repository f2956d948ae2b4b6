package wire

import (
	"net"
	"time"
)

// ReadDeadline keeps a connection's read deadline at an idle timeout after
// the latest read, capped by an optional absolute deadline, so that a
// stream may last for hours while a silent peer is still caught. Moving a
// deadline is a runtime timer update (and can wake the netpoller), so a
// deadline once set is left alone until it would fire more than
// IdleSlack(Idle) late: a few updates a second per stream, not one per
// read.
type ReadDeadline struct {
	Idle  time.Duration // longest wait for the next bytes; 0 = none
	Until int64         // absolute cap, Unix ns; 0 = none
	armed int64         // deadline set on the connection, Unix ns; 0 = none
}

// IdleSlack is how late an idle timeout may fire: a quarter of it, at most
// a second.
func IdleSlack(idle time.Duration) time.Duration { return min(idle/4, time.Second) }

// Arm is called before each read of c. It inlines to one test when no
// deadline is wanted or set.
func (d *ReadDeadline) Arm(c net.Conn) {
	if d.Idle > 0 || d.Until != 0 || d.armed != 0 {
		d.arm(c)
	}
}

func (d *ReadDeadline) arm(c net.Conn) {
	var lo, hi int64 // acceptable deadline range, Unix ns; 0 = none wanted
	if d.Idle > 0 {
		t := time.Now().UnixNano() + int64(d.Idle)
		lo, hi = t, t+int64(IdleSlack(d.Idle))
	}
	if d.Until != 0 {
		if hi == 0 || d.Until < hi {
			hi = d.Until
		}
		if lo == 0 || d.Until < lo {
			lo = d.Until
		}
	}
	if hi != 0 && d.armed >= lo && d.armed <= hi {
		return
	}
	d.armed = hi
	if hi == 0 {
		_ = c.SetReadDeadline(time.Time{})
		return
	}
	_ = c.SetReadDeadline(time.Unix(0, hi))
}
