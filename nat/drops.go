package nat

import "sync/atomic"

// Reasons the NAT drops a packet it has taken, the keys of Stats.Drops.
// Every packet the NAT loses is one of these; a flow refused by a limit is
// counted in Stats.Refused instead.
const (
	// DropQueueFull: Deliver's queue, or an echo flow's, had no room.
	DropQueueFull = "queue_full"
	// DropQueueLate: a datagram of a flow with a socket waited longer
	// than maxQueueDelay in Deliver's queue (a flood).
	DropQueueLate = "queue_late"
	// DropSendFailed: a host socket did not take a workload's datagram
	// (its send buffer full under a flood, or the host refusing it).
	DropSendFailed = "send_failed"
	// DropFlowEnded: the datagram came as its flow expired.
	DropFlowEnded = "flow_ended"
	// DropOutFailed: Config.Out did not take a packet toward a workload.
	DropOutFailed = "out_failed"
)

// dropReason indexes dropCounters; dropNames gives each its Drop constant.
type dropReason uint8

const (
	dropQueueFull dropReason = iota
	dropQueueLate
	dropSendFailed
	dropFlowEnded
	dropOutFailed
	numDropReasons
)

var dropNames = [numDropReasons]string{
	dropQueueFull: DropQueueFull, dropQueueLate: DropQueueLate, dropSendFailed: DropSendFailed, dropFlowEnded: DropFlowEnded, dropOutFailed: DropOutFailed,
}

// DropReasons lists the Drop constants, for exporters that publish every
// reason, zero or not.
func DropReasons() []string { return dropNames[:] }

// dropCounters count drops by reason, from any goroutine.
type dropCounters [numDropReasons]atomic.Uint64

func (d *dropCounters) add(r dropReason)            { d[r].Add(1) }
func (d *dropCounters) addN(r dropReason, n uint64) { d[r].Add(n) }

func (d *dropCounters) snapshot() map[string]uint64 {
	m := make(map[string]uint64, numDropReasons)
	for r := range numDropReasons {
		m[dropNames[r]] = d[r].Load()
	}
	return m
}
