// Package conn is overlayd's underlay side: a UDP socket for VXLAN and a raw
// IPv4 socket for IP-in-IP, each moving a batch of packets per system call
// (recvmmsg, sendmmsg) with no allocation per call. golang.org/x/net/ipv4's
// PacketConn allocates a net.Addr per received message, so the batch here
// keeps its own message headers, iovecs and addresses and reuses them.
package conn

// Message is one packet of a batch, filled in place by the router.
type Message struct {
	// Buf holds the bytes to send, or the room to receive into (its
	// length, not its capacity, is what the kernel may fill).
	Buf []byte
	// N is the number of bytes received into Buf.
	N int
	// Addr is the peer: destination on send, source on receive.
	Addr [4]byte
	// Port is the peer's UDP port (UDP only; zero on the raw socket).
	Port uint16
	// Flow is, on send, a hash of the flow the packet carries (a UDP
	// socket spreading its source ports picks one by it); unused on
	// receive.
	Flow uint32
	// TOS is the outer IPv4 TOS byte (DSCP and ECN) on the UDP socket: on
	// send, what the datagram goes out with (an IP_TOS control message;
	// messages of different TOS are never joined into one GSO train); on
	// receive, what it arrived with (IP_RECVTOS; datagrams the kernel's GRO
	// coalesced share their IPv4 header, TOS included, as inet_gro_receive
	// only merges packets whose TOS is the same). The raw IP-in-IP socket
	// ignores it on send and leaves it zero on receive: its messages hold
	// the outer header, TOS and all.
	TOS uint8
	// Truncated is set on receive when the packet was longer than Buf: the
	// kernel dropped the rest (MSG_TRUNC), and N is len(Buf). A flag, not
	// an error, so the other packets of the batch are still delivered.
	Truncated bool
	// TooBig is set by WriteBatch on each message the kernel refused for
	// being larger than its path MTU toward Addr (EMSGSIZE; on the UDP
	// socket also EINVAL for a GSO train, whose segments would need
	// fragmenting), and cleared on the others it sent or refused; PathMTU
	// says what fits. Unused on receive.
	TooBig bool
	// Fragment, on send, marks a message that may be larger than the path
	// MTU toward Addr and may be fragmented on the way. The UDP socket sends
	// every other datagram with DF, so that a router on the path with a
	// smaller MTU says so (ICMP fragmentation needed) and the kernel learns
	// the path MTU; a Fragment message goes out of a socket of its own that
	// lets the kernel fragment it instead. The raw IP-in-IP socket
	// fragments any packet whose header has no DF and ignores the flag.
	Fragment bool
}

// Transport is an underlay socket with batched I/O. ReadBatch and WriteBatch
// may run at the same time. ReadBatch is for one goroutine at a time (its
// message headers are reused from call to call); WriteBatch may be called
// from several, one call at a time going through.
type Transport interface {
	// ReadBatch blocks until at least one packet is there, then receives
	// as many as are queued, up to len(msgs) and MaxBatch, into msgs[:n]
	// (N, Addr, Port, TOS, Truncated set; msgs[n:] untouched). After Close it
	// returns an error wrapping net.ErrClosed.
	ReadBatch(msgs []Message) (n int, err error)
	// WriteBatch sends every message, waiting for socket buffer room as
	// needed, and returns how many the kernel accepted. A message the
	// kernel refuses (too big, no route, filtered) is skipped, the rest
	// still sent, and the first refusal returned as the error; so n <
	// len(msgs) comes with an error, and len(msgs)-n is the count lost.
	// Each message's TooBig says whether it was refused for its size.
	WriteBatch(msgs []Message) (n int, err error)
	// Close closes the socket and unblocks a waiting ReadBatch.
	Close() error
}

// Pollable is a Transport whose receives can be looked for outside Go's
// poller: a loop that has just moved traffic polls FD without blocking for
// a little while (busy polling), and calls ReadBatch once FD is readable,
// so that a packet following closely finds the loop awake instead of
// parked, which costs hand-offs between threads to wake it.
type Pollable interface {
	// FD is the receiving socket's descriptor. It is valid until Close;
	// the caller must not read from it, close it or change its mode.
	FD() int
	// Buffered reports whether ReadBatch has packets on hand that it
	// returns without asking the kernel: the socket may then be empty
	// while packets wait. Like ReadBatch, for one goroutine at a time.
	Buffered() bool
}

// MaxBatch is the most messages one ReadBatch receives; WriteBatch sends
// longer slices in several system calls.
const MaxBatch = 128
