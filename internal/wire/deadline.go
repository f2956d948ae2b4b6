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

// Due is when silence since from (Unix ns) becomes a timeout: the idle
// timeout after from, or Until if that is sooner; 0 when neither is set.
func (d *ReadDeadline) Due(from int64) int64 {
	var t int64
	if d.Idle > 0 {
		t = from + int64(d.Idle)
	}
	if d.Until != 0 && (t == 0 || d.Until < t) {
		t = d.Until
	}
	return t
}

func (d *ReadDeadline) arm(c net.Conn) {
	// the acceptable deadline range, Unix ns; 0 = none wanted
	now := time.Now().UnixNano()
	lo, hi := d.Due(now), d.Due(now+int64(IdleSlack(d.Idle)))
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
