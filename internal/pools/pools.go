// Package pools is the model of the port pools the kernel allocates from,
// per network namespace: the bind(0) pool of each local address and the
// connect() pool of each (source, destination address, destination port),
// with who holds their ports. It aggregates socket records (Sock) however
// they were read, and knows no BPF: internal/pressure reads the kernel's
// socket tables into it.
package pools

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/portsleuth/portsleuth/internal/event"
)

// Namespace is the port pressure of one network namespace. JSON names are a
// contract (see README).
type Namespace struct {
	Netns           uint64        `json:"netns"`
	PIDs            []int         `json:"pids"`
	PortRange       [2]int        `json:"port_range"`
	Reserved        int           `json:"reserved"`
	TCPTwReuse      int           `json:"tcp_tw_reuse"`
	AutobindReuse   int           `json:"ip_autobind_reuse"`
	TCPMaxTWBuckets int           `json:"tcp_max_tw_buckets"`
	Sockets         int           `json:"sockets"`
	BindOwnedPorts  int           `json:"bind_owned_ports"`
	BindPools       []BindPool    `json:"bind_pools"`
	ConnectPools    []ConnectPool `json:"connect_pools"`
	Top             []Owner       `json:"top"`
	Verdict         string        `json:"verdict"`
	ScanSeconds     float64       `json:"scan_seconds"`
	// Cookie tells the namespace from later ones given its inode number
	// (netns.Sysctls.Cookie); 0 when unknown.
	Cookie uint64 `json:"-"`
}

// BindPool is what bind(addr, 0) can still get: ports of the range with no
// owner on this address (or on the wildcard).
type BindPool struct {
	Proto       string  `json:"proto"`
	Local       string  `json:"local"`
	Used        int     `json:"used"`
	Free        int     `json:"free"`
	PercentUsed float64 `json:"percent_used"`
	// Owners hold the used ports, most first.
	Owners []Owner `json:"owners,omitempty"`
}

// ConnectPool is what connect() can still get toward one destination from one
// source address: the range, less reserved ports, less every port a bind() or
// listen() owner holds (those are skipped for every destination), less the
// sockets already in this 4-tuple space.
type ConnectPool struct {
	Local       string `json:"local"`
	Dest        string `json:"dest"`
	Established int    `json:"established"`
	TimeWait    int    `json:"time_wait"`
	Other       int    `json:"other"`
	// BindOwned counts the range's ports held by bind()/listen() owners
	// outside this 4-tuple space: connect() skips them for every destination.
	BindOwned int `json:"bind_owned"`
	Free      int `json:"free"`
	// Size is the range's ports less the reserved ones.
	Size        int     `json:"size"`
	PercentUsed float64 `json:"percent_used"`
	// TimeWaitLeft is the least and most time (seconds) a TIME_WAIT here has left.
	TimeWaitLeft [2]float64 `json:"time_wait_left_seconds"`
	Owners       []Owner    `json:"owners"`
}

// Owner is a process holding sockets. In a pool's owner list the counts say
// how it holds that pool's ports: BindOwner counts ports of the range it holds
// through a bind()/listen() owner (taken from every destination), the rest
// its other sockets in the pool by state. A TIME_WAIT socket has no process:
// it is counted for the process that closed the connection, when the tracer
// saw that close. PID 0 stands for sockets no process has open.
type Owner struct {
	PID         int    `json:"pid"`
	Comm        string `json:"comm"`
	Sockets     int    `json:"sockets"`
	BindOwner   int    `json:"bind_owner,omitempty"`
	Established int    `json:"established,omitempty"`
	TimeWait    int    `json:"time_wait,omitempty"`
	Other       int    `json:"other,omitempty"`
	// BindConnected counts its sockets that bind() gave a port and that then
	// connected (the bind-before-connect trap); BindConnectedAny those of them
	// bound to the wildcard address.
	BindConnected    int `json:"bind_connected,omitempty"`
	BindConnectedAny int `json:"bind_connected_any,omitempty"`
	// Master is the process it is a prefork worker of, when the report named one.
	Master int `json:"master,omitempty"`
	// Exited: it closed the connections of its TIME_WAITs and is gone (its
	// pid may belong to another process now); Start tells it apart.
	Exited bool   `json:"exited,omitempty"`
	Start  uint64 `json:"start_ns,omitempty"`
}

// HolderQuery asks a scan for the sockets that own one port.
type HolderQuery struct {
	Proto string
	Addr  netip.Addr // the address a bind() wanted; overlaps equal and wildcard owners
	Port  uint16
	Found []event.Holder
}

// MaxHolders bounds the holders a query keeps.
const MaxHolders = 8

func top(counts map[int]int, n int, comm func(int) string) []Owner {
	owners := make([]Owner, 0, len(counts))
	for pid, c := range counts {
		owners = append(owners, Owner{PID: pid, Sockets: c})
	}
	slices.SortFunc(owners, func(a, b Owner) int { return cmp.Or(cmp.Compare(b.Sockets, a.Sockets), cmp.Compare(a.PID, b.PID)) })
	if len(owners) > n {
		owners = owners[:n]
	}
	for i := range owners {
		owners[i].Comm = comm(owners[i].PID)
	}
	return owners
}
