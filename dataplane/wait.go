package dataplane

import (
	"time"

	"golang.org/x/sys/unix"
)

// A loop that has just moved traffic may poll its descriptor without
// blocking for a short while before its read parks it in Go's poller, as
// Linux's NAPI busy polling does. A packet that finds a loop parked wakes
// several threads on its way to it (epoll's, the one the runtime hands the
// goroutine to, the runtime's monitor); one that finds it polling wakes
// none. The spin is bounded and adaptive (spin), so an idle node burns no
// CPU and a loop whose packets come too far apart does not spin at all.
//
// Waiting in poll(2) on a locked thread of the loop's own instead of in Go's
// poller was tried and measured: it wakes the loop's thread alone, but a
// goroutine blocked in a system call keeps its P in the syscall state, so
// the runtime's monitor (sysmon) never sleeps deeply, takes the P back and
// restarts its 20 µs polling every time; on two CPUs that cost three to
// four times the context switches it saved.

// spinWait is one loop's spinning: its descriptor and its spin.
type spinWait struct {
	fds  [1]unix.PollFd
	spin spin
	// since is when the loop finished its last batch: the wait for the
	// next one runs from there.
	since time.Time
}

func newSpinWait(fd int, max time.Duration) *spinWait {
	return &spinWait{fds: [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, spin: spin{max: max}}
}

// beforeRead polls the descriptor without blocking until it is readable
// or the spin's budget is spent; the read that follows either finds the
// packets or parks in Go's poller.
func (w *spinWait) beforeRead() {
	w.since = time.Now()
	budget := w.spin.budget()
	if budget == 0 {
		return
	}
	for {
		w.fds[0].Revents = 0
		// An error (EINTR; there is no other for a valid descriptor) is
		// one more turn, and a descriptor closed meanwhile is "ready"
		// (POLLNVAL): the read reports the close.
		if n, _ := unix.Poll(w.fds[:], 0); n > 0 || time.Since(w.since) >= budget {
			return
		}
	}
}

// afterRead records how long the loop waited for its batch.
func (w *spinWait) afterRead() { w.spin.waited(time.Since(w.since)) }

// spin decides how long a loop polls without blocking before it sleeps, as
// Linux's NAPI busy polling does: long enough to catch a packet that
// follows closely, bounded so that an idle node burns no CPU and a busy
// one does not take the workloads' CPU. It adapts to how long the loop has
// recently waited for its next batch: when that is longer than the budget
// allows, spinning would only burn the budget, and the loop blocks at once.
type spin struct {
	max time.Duration // the budget's bound; 0: never spin
	// avgWait is a moving average of how long the loop waited for its
	// next batch, spinning or blocked.
	avgWait time.Duration
}

// budget is how long to spin before the next block: twice the recent
// average wait, up to max, or none at all when the average is above max.
func (s *spin) budget() time.Duration {
	if s.max <= 0 || s.avgWait > s.max {
		return 0
	}
	return min(s.max, 2*s.avgWait)
}

// waited records one wait's length: the average moves an eighth of the way
// towards it. A wait counts as at most four times the bound, long is long
// however long, so that three long pauses turn the spin off and about a
// dozen short gaps turn it back on.
func (s *spin) waited(d time.Duration) {
	d = min(d, 4*s.max)
	if s.avgWait == 0 {
		s.avgWait = d
		return
	}
	s.avgWait += (d - s.avgWait) / 8
}
