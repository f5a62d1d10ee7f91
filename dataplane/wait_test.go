package dataplane

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSpinBudget(t *testing.T) {
	const max = 50 * time.Microsecond
	tests := []struct {
		name  string
		max   time.Duration
		waits []time.Duration
		want  time.Duration
	}{
		{"off spins never", 0, []time.Duration{time.Microsecond}, 0},
		{"no wait seen yet", max, nil, 0},
		{"short gaps: twice the average", max, []time.Duration{10 * time.Microsecond}, 20 * time.Microsecond},
		{"gaps near the bound: the bound", max, []time.Duration{40 * time.Microsecond}, max},
		{"long gaps: no spin", max, []time.Duration{10 * time.Millisecond}, 0},
		{"ten short gaps after long ones are not enough", max,
			append(repeat(10*time.Millisecond, 10), repeat(5*time.Microsecond, 10)...), 0},
		{"a dozen short gaps after long ones turn it back on", max,
			append(repeat(10*time.Millisecond, 10), repeat(5*time.Microsecond, 12)...), max},
		{"one long pause after short gaps keeps it on", max,
			append(repeat(5*time.Microsecond, 40), 300*time.Microsecond), max},
		{"a few long pauses after short gaps turn it off", max,
			append(repeat(5*time.Microsecond, 40), repeat(10*time.Millisecond, 3)...), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spin{max: tc.max}
			for _, d := range tc.waits {
				s.waited(d)
			}
			if got := s.budget(); got != tc.want {
				t.Errorf("budget = %v, want %v (average wait %v)", got, tc.want, s.avgWait)
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// TestSpinWaitIsBounded polls an empty pipe with the spin on, and
// checks that the spin ends by itself, and at once when the pipe has data.
func TestSpinWaitIsBounded(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	w := newSpinWait(p[0], 50*time.Microsecond)
	w.spin.waited(time.Microsecond) // a short gap: the next wait spins
	if w.spin.budget() == 0 {
		t.Fatal("no spin after a short gap")
	}
	for _, data := range []bool{false, true} {
		if data {
			if _, err := unix.Write(p[1], []byte{1}); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan struct{})
		go func() { w.beforeRead(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitLimit):
			t.Fatalf("the spin (data in the pipe: %v) did not end within %v", data, waitLimit)
		}
	}
}

// TestSpinWaitAllocatesNothing: the spin is on the per-batch path.
func TestSpinWaitAllocatesNothing(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	w := newSpinWait(p[0], 20*time.Microsecond)
	w.spin.waited(time.Microsecond)
	allocs := testing.AllocsPerRun(100, func() {
		w.beforeRead() // the pipe is empty: it spins its whole budget
		w.afterRead()
	})
	if allocs != 0 {
		t.Errorf("a spin allocates %v times, want 0", allocs)
	}
}
