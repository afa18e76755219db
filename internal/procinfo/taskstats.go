package procinfo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNoTaskstats: the kernel has no taskstats (CONFIG_TASKSTATS=n) or it is
// out of reach (it answers only in the initial network namespace).
var ErrNoTaskstats = errors.New("taskstats unavailable")

// PreciseStartTime is when pid started on CLOCK_MONOTONIC, to within tens of
// microseconds: the kernel's taskstats reply carries ac_etime, the
// microseconds since task->start_time (the very field BPF reads) measured at
// the moment of the reply, on 6.1 through 6.18 alike. Unlike StartTime it
// needs no clock-tick rounding and no suspend correction, but it needs
// CAP_NET_ADMIN and the initial network namespace.
func PreciseStartTime(pid uint32) (uint64, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return 0, fmt.Errorf("opening generic netlink: %w", err)
	}
	defer unix.Close(fd)
	// Bounds a call against a kernel that never answers.
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("setting netlink timeout: %w", err)
	}
	family, err := taskstatsFamily(fd)
	if err != nil {
		return 0, err
	}
	var pidAttr [4]byte
	binary.NativeEndian.PutUint32(pidAttr[:], pid)
	before, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	reply, err := genlRequest(fd, family, unix.TASKSTATS_CMD_GET, nlAttr(unix.TASKSTATS_CMD_ATTR_PID, pidAttr[:]))
	if err != nil {
		return 0, fmt.Errorf("asking taskstats about pid %d: %w", pid, err)
	}
	after, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	etime, err := parseEtime(reply)
	if err != nil {
		return 0, fmt.Errorf("taskstats for pid %d: %w", pid, err)
	}
	// The kernel read its clock between before and after, and truncated the
	// elapsed time to a microsecond: take the middle of what that allows.
	lo, hi := before-etime*1000-999, after-etime*1000
	return lo + (hi-lo)/2, nil
}

func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("reading CLOCK_MONOTONIC: %w", err)
	}
	return uint64(ts.Nano()), nil
}

func taskstatsFamily(fd int) (uint16, error) {
	reply, err := genlRequest(fd, unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY,
		nlAttr(unix.CTRL_ATTR_FAMILY_NAME, []byte(unix.TASKSTATS_GENL_NAME+"\x00")))
	if errors.Is(err, unix.ENOENT) {
		return 0, ErrNoTaskstats
	}
	if err != nil {
		return 0, fmt.Errorf("resolving the taskstats family: %w", err)
	}
	id := nlAttrs(reply)[unix.CTRL_ATTR_FAMILY_ID]
	if len(id) < 2 {
		return 0, fmt.Errorf("resolving the taskstats family: no id in reply")
	}
	return binary.NativeEndian.Uint16(id), nil
}

// parseEtime reads ac_etime from a TASKSTATS_CMD_GET reply's attributes.
func parseEtime(attrs []byte) (uint64, error) {
	stats := nlAttrs(nlAttrs(attrs)[unix.TASKSTATS_TYPE_AGGR_PID])[unix.TASKSTATS_TYPE_STATS]
	// Fields are only ever appended to struct taskstats, so ac_etime's offset
	// holds for every version that reaches it.
	end := unsafe.Offsetof(unix.Taskstats{}.Ac_etime) + 8
	if uintptr(len(stats)) < end {
		return 0, fmt.Errorf("stats of %d bytes, want at least %d", len(stats), end)
	}
	return binary.NativeEndian.Uint64(stats[end-8:]), nil
}

// genlRequest sends one generic netlink command and returns the attributes of
// its reply.
func genlRequest(fd int, family uint16, cmd uint8, attrs []byte) ([]byte, error) {
	const hdr = unix.NLMSG_HDRLEN + unix.GENL_HDRLEN
	msg := make([]byte, hdr, hdr+len(attrs))
	binary.NativeEndian.PutUint32(msg[0:], uint32(hdr+len(attrs)))
	binary.NativeEndian.PutUint16(msg[4:], family)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	msg[unix.NLMSG_HDRLEN] = cmd
	msg[unix.NLMSG_HDRLEN+1] = 1 // genl version
	msg = append(msg, attrs...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sending: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return nil, fmt.Errorf("receiving: %w", err)
	}
	if n < unix.NLMSG_HDRLEN+4 {
		return nil, fmt.Errorf("short reply of %d bytes", n)
	}
	b := buf[:n]
	if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR {
		if errno := -int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); errno != 0 {
			return nil, unix.Errno(errno)
		}
		return nil, errors.New("empty reply")
	}
	size := int(binary.NativeEndian.Uint32(b))
	if size < hdr || size > n {
		return nil, fmt.Errorf("reply length %d of %d bytes read", size, n)
	}
	return b[hdr:size], nil
}

func nlAttr(typ uint16, val []byte) []byte {
	b := make([]byte, unix.NLA_HDRLEN, unix.NLA_HDRLEN+len(val)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(unix.NLA_HDRLEN+len(val)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, val...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// nlaTypeMask drops the nested and byte-order flags from an attribute type.
const nlaTypeMask = 0x3fff

// nlAttrs indexes a run of netlink attributes by type.
func nlAttrs(b []byte) map[uint16][]byte {
	m := make(map[uint16][]byte)
	for len(b) >= unix.NLA_HDRLEN {
		size := int(binary.NativeEndian.Uint16(b[0:]))
		if size < unix.NLA_HDRLEN || size > len(b) {
			break
		}
		m[binary.NativeEndian.Uint16(b[2:])&nlaTypeMask] = b[unix.NLA_HDRLEN:size]
		size = (size + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if size >= len(b) {
			break
		}
		b = b[size:]
	}
	return m
}
