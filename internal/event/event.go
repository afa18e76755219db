// Package event is portsleuth's data model: a failed bind()/connect() as the
// agent sees it, the failure classes counted in the kernel, and per-process
// counters. It knows no BPF: internal/decode turns the kernel's records
// into these types.
package event

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/netns"
)

// Op is the failing call.
type Op string

const (
	Bind    Op = "bind"
	Connect Op = "connect"
	// Listen is a listen() that found no port (unbound socket) or a conflict.
	Listen Op = "listen"
)

// Class is what decides a failure's pattern; the kernel counts failures per
// (pid, Class), so every count derived from it is exact.
type Class struct {
	Op     Op         `json:"op"`
	Proto  string     `json:"proto"`  // "tcp" or "udp"
	Family string     `json:"family"` // "ipv4" or "ipv6"
	Errno  unix.Errno `json:"errno"`
	// Port0: bind asked for port 0; connect ran on a socket without a bound port.
	Port0 bool `json:"port0"`
	// AnyAddr: bind asked for the wildcard address; connect had no bound address.
	AnyAddr bool `json:"any_addr"`
}

// ProcKey identifies a process. A pid is reused; its start time (the
// kernel's task start_time, ns since boot) tells the processes apart.
type ProcKey struct {
	PID   uint32 `json:"pid"`
	Start uint64 `json:"start_ns"`
}

// Event is one failed call.
type Event struct {
	Time    time.Time      `json:"time"`
	PID     uint32         `json:"pid"`
	Start   uint64         `json:"start_ns"` // the process's start time: see ProcKey
	TID     uint32         `json:"tid"`
	Comm    string         `json:"comm"`   // the process (thread-group leader)
	Thread  string         `json:"thread"` // the calling thread
	Class   Class          `json:"class"`
	Addr    netip.AddrPort `json:"addr"` // bind: requested; connect: bound local address (zero port if none)
	Dest    netip.AddrPort `json:"dest"` // connect only
	Options []string       `json:"options"`
	Netns   uint64         `json:"netns"`
	// NetnsCookie tells the namespace from later ones the kernel gives the
	// same inode number once it is destroyed (0: unknown).
	NetnsCookie uint64 `json:"netns_cookie,omitempty"`
	CgroupID    uint64 `json:"cgroup_id"`
	SockIno     uint64 `json:"sock_ino"`
	// Source is the layer that saw the call: "syscall", "inet_bind", "inet_hash_connect"...
	Source string `json:"source"`
	// ErrnoInferred: the layer saw no return value (cgroup backend), the
	// errno was worked out from what it saw.
	ErrnoInferred bool `json:"errno_inferred,omitempty"`
	// TWBlocked and EstBlocked (kernel layer, connect) count candidate ports
	// taken by a TIME_WAIT socket that could not be reused / a live connection.
	TWBlocked  uint32 `json:"tw_blocked,omitempty"`
	EstBlocked uint32 `json:"est_blocked,omitempty"`
	// Holder (kernel layer, bind EADDRINUSE) is the socket that holds the port.
	Holder *Holder `json:"holder,omitempty"`
}

// Proc is the process that made the call.
func (e *Event) Proc() ProcKey { return ProcKey{e.PID, e.Start} }

// Holder is a socket that owns the port a bind() wanted.
type Holder struct {
	State   string         `json:"state"` // LISTEN, TIME_WAIT, ESTABLISHED, UNCONNECTED (UDP)...
	Local   netip.AddrPort `json:"local"`
	Remote  netip.AddrPort `json:"remote"` // the peer of a connected holder
	Options []string       `json:"options"`
	SockIno uint64         `json:"socket_inode,omitempty"`
	// PID and Comm name the process with the socket open, when one was found.
	PID  uint32 `json:"pid,omitempty"`
	Comm string `json:"comm,omitempty"`
	// Master is the process PID is a prefork worker of (same executable and
	// cgroup): the one to restart or stop, since a killed worker is respawned.
	Master uint32 `json:"master,omitempty"`
}

var tcpStates = []string{1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

// StateName names a socket state the way ss does, for TCP or UDP.
func StateName(proto string, state uint8) string {
	if proto == "udp" {
		switch state {
		case 1:
			return "CONNECTED"
		case 7:
			return "UNCONNECTED"
		}
	}
	if int(state) < len(tcpStates) && tcpStates[state] != "" {
		return tcpStates[state]
	}
	return fmt.Sprintf("state %d", state)
}

// ProcStats are a process's counters, kept in the kernel.
type ProcStats struct {
	BindsOK        uint64 `json:"binds_ok"`
	BindsFailed    uint64 `json:"binds_failed"`
	BindsOther     uint64 `json:"binds_other"`
	ConnectsOK     uint64 `json:"connects_ok"`
	ConnectsFailed uint64 `json:"connects_failed"`
	ConnectsOther  uint64 `json:"connects_other"`
	// Port0BindsOK counts sockets a port-0 bind gave a port; Port0BindConnects
	// how many of those went on to connect().
	Port0BindsOK      uint64 `json:"port0_binds_ok"`
	Port0BindConnects uint64 `json:"port0_bind_connects"`
	// Kernel layer: candidate ports connect() found taken, by TIME_WAIT / live connections.
	ConnectTWBlocked  uint64 `json:"connect_tw_blocked,omitempty"`
	ConnectEstBlocked uint64 `json:"connect_est_blocked,omitempty"`
	ListensOK         uint64 `json:"listens_ok,omitempty"`
	ListensFailed     uint64 `json:"listens_failed,omitempty"`
}

// Failures is the number of failed calls that portsleuth attributes.
func (s ProcStats) Failures() uint64 { return s.BindsFailed + s.ConnectsFailed + s.ListensFailed }

// ProcMeta is what the kernel recorded about a process at its first failure.
type ProcMeta struct {
	Comm     string `json:"comm"`
	Cmdline  string `json:"cmdline"` // possibly truncated
	Netns    uint64 `json:"netns"`
	CgroupID uint64 `json:"cgroup_id"`
	// Parent is the parent process at the first failure (a traced command's
	// tree is followed through it after its members exit).
	Parent ProcKey `json:"parent"`
	// InCommand: it descends by fork from the command report -- CMD runs.
	InCommand bool `json:"in_command,omitempty"`
}

// Snapshot is the content of the kernel's counters at one moment.
type Snapshot struct {
	Procs    map[ProcKey]ProcStats
	Meta     map[ProcKey]ProcMeta
	Failures map[ProcKey]map[Class]uint64
	// Unattributed counts failures by class alone: they came once the
	// per-process table was full (its bound is in the README).
	Unattributed map[Class]uint64
	// Netns holds the sysctls of each namespace a failure happened in, as
	// the kernel read them at the first one.
	Netns map[uint64]netns.Sysctls
	Lost  uint64 // failures that found the ring buffer full
	// Untracked counts calls the cgroup backend could not follow to their
	// outcome (its pending table was full): they are in no count.
	Untracked uint64
	// Tree holds the processes forked from a traced command (report -- CMD)
	// since tracing began; nil when no command is followed.
	Tree map[ProcKey]bool
}

// MonotonicEpoch is the wall-clock time at which CLOCK_MONOTONIC was zero.
func MonotonicEpoch() time.Time {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now().Add(-time.Duration(ts.Nano()))
}

// ProgramStats is one BPF program's cost as the kernel counts it while run-time
// statistics are enabled.
type ProgramStats struct {
	Runtime  time.Duration
	RunCount uint64
}
