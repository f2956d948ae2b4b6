// Package fdtable sizes the process's file descriptor table up front.
//
// Linux grows a process's descriptor table by doubling it as descriptors
// are opened, and in a multi-threaded process each doubling waits for an
// RCU grace period (synchronize_rcu in expand_fdtable), 10–20 ms here.
// Meanwhile every thread opening a descriptor — a shadow's dial, an accept
// — sleeps in the kernel holding its Go P; with two of them the scheduler
// has no P left until sysmon takes them back, and every stream in the
// process stops. abproxy's mirror benchmark showed exactly this: one
// 12–16 ms stall of all streams when the shadows' connections crossed 128
// descriptors. Growing the table once at start-up takes that cost out of
// the traffic.
package fdtable

// Max is the most descriptors Reserve makes room for: 64 Ki descriptors
// cost the kernel about half a MiB.
const Max = 1 << 16
