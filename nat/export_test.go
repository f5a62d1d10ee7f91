package nat

// NetstackPackets is how many packets the netstack's NIC has taken from
// the workloads: after GRO, a joined run of TCP segments counts once.
func (n *NAT) NetstackPackets() uint64 {
	return n.stack.NICInfo()[nicID].Stats.Rx.Packets.Value()
}
