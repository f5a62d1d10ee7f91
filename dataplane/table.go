package dataplane

import (
	"encoding/binary"
	"net/netip"

	"github.com/gaissmai/bart"

	"github.com/overlayd/overlayd/conn"
	"github.com/overlayd/overlayd/plan"
)

// dest is what the data path needs to know about a destination prefix.
type dest struct {
	kind  plan.DestKind
	encap plan.Encap // DestRemote: how the block is reached
	peer  *peer      // DestRemote: the node that owns the block
}

// peer is another node as the data path sees it.
type peer struct {
	name string
	addr [4]byte
	mac  [6]byte
	// tunnelAddr is the node's tunnel address, zero if it has none.
	tunnelAddr [4]byte
	counters   *peerCounters
	// path is what is known of the underlay path to the node; nil in a
	// table not built by a router (tests).
	path *pathMTU
}

// table is an immutable snapshot of the routing decisions of one plan. A new
// one is built on every change and published through an atomic.Pointer, so
// the packet loops read it with no lock.
type table struct {
	plan *plan.Plan
	// grids answer lookups when every pool can have one (an address in no
	// grid is then in no pool); dests, the trie, is built only otherwise.
	grids []blockGrid
	dests *bart.Fast[*dest]
	// byAddr finds the peer an encapsulated packet came from by its outer
	// source address.
	byAddr     *bart.Fast[*peer]
	peers      []*peer
	self       [4]byte // this node's underlay address
	tunnelAddr [4]byte // zero when the node has none
	vtepMAC    [6]byte
	// transports are the router's, by encapsulation (nil: not open).
	transports [numEncaps]conn.Transport
	// natSources are the natOutgoing pools; natExempt the destinations
	// outside the pools that are not NATed (node addresses, with
	// IPPoolsAndHostIPs).
	natSources *bart.Fast[bool]
	natExempt  *bart.Fast[bool]
}

func newTable(p *plan.Plan, transports [numEncaps]conn.Transport) *table {
	return buildTable(p, transports, true)
}

// buildTable makes the table of plan p, with block grids where they can
// answer if withGrids (false: the trie alone, which tests compare with).
func buildTable(p *plan.Plan, transports [numEncaps]conn.Transport, withGrids bool) *table {
	t := &table{
		plan:       p,
		transports: transports,
		byAddr:     new(bart.Fast[*peer]),
		self:       p.Address.Addr().As4(),
	}
	if p.TunnelAddr.IsValid() {
		t.tunnelAddr = p.TunnelAddr.As4()
	}
	copy(t.vtepMAC[:], p.VTEPMAC)
	byName := map[string]*peer{}
	for _, pp := range p.Peers {
		pe := &peer{name: pp.Name, addr: pp.Addr.As4()}
		if pp.TunnelAddr.IsValid() {
			pe.tunnelAddr = pp.TunnelAddr.As4()
		}
		copy(pe.mac[:], pp.VTEPMAC)
		byName[pp.Name] = pe
		t.peers = append(t.peers, pe)
		t.byAddr.Insert(netip.PrefixFrom(pp.Addr, 32), pe)
	}
	// The plan's forwarding prefixes, as Decide sees them: pools (an
	// address in no block) apart from the blocks inside them.
	var (
		pools, blocks   []netip.Prefix
		noBlock, blockD []*dest
	)
	for _, pd := range p.Dests() {
		d := &dest{kind: pd.Kind}
		if pd.Kind == plan.DestNoBlock {
			pools, noBlock = append(pools, pd.Prefix), append(noBlock, d)
			continue
		}
		if pd.Kind == plan.DestRemote {
			r := p.Routes[pd.Route]
			d.encap, d.peer = r.Encap, byName[r.Node]
		}
		blocks, blockD = append(blocks, pd.Prefix), append(blockD, d)
	}
	if withGrids {
		t.grids = gridsFor(pools, noBlock, blocks, blockD)
	}
	if t.grids == nil {
		t.dests = new(bart.Fast[*dest])
		for i, pl := range pools {
			t.dests.Insert(pl, noBlock[i])
		}
		for i, b := range blocks {
			t.dests.Insert(b, blockD[i])
		}
	}
	t.natSources, t.natExempt = new(bart.Fast[bool]), new(bart.Fast[bool])
	for _, c := range p.NATPools {
		t.natSources.Insert(c, true)
	}
	if p.NATExcludeHostIPs {
		t.natExempt.Insert(netip.PrefixFrom(p.Address.Addr(), 32), true)
		for _, pp := range p.Peers {
			t.natExempt.Insert(netip.PrefixFrom(pp.Addr, 32), true)
		}
	}
	return t
}

// natted reports whether a packet from src to dst (outside every pool) is
// natOutgoing traffic, as Felix's cali-nat-outgoing decides.
func (t *table) natted(src, dst [4]byte) bool {
	if _, ok := t.natSources.Lookup(netip.AddrFrom4(src)); !ok {
		return false
	}
	_, exempt := t.natExempt.Lookup(netip.AddrFrom4(dst))
	return !exempt
}

// lookup returns what dst is to this node; nil means outside every pool.
func (t *table) lookup(dst [4]byte) *dest {
	if t.grids != nil {
		a := binary.BigEndian.Uint32(dst[:])
		for i := range t.grids {
			if d, ok := t.grids[i].lookup(a); ok {
				return d
			}
		}
		return nil
	}
	d, _ := t.dests.Lookup(netip.AddrFrom4(dst))
	return d
}

// peerAt returns the known node whose underlay address is src, or nil.
func (t *table) peerAt(src [4]byte) *peer {
	p, _ := t.byAddr.Lookup(netip.AddrFrom4(src))
	return p
}
