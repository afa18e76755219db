package scenario

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A single-entry io_uring, just enough to issue IORING_OP_CONNECT and
// IORING_OP_BIND the way an io_uring server does: the calls never pass the
// bind/connect syscalls. (No maintained Go io_uring library is reachable from
// this build's module proxy; this is the minimum the kernel ABI asks for.)

const (
	ioringOpConnect = 16
	ioringOpBind    = 56 // Linux 6.11

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringEnterGetEvents = 1
	ioringFeatSingleMmap = 1
)

type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type uringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqringOffsets
	CQOff                                                                  cqringOffsets
}

type sqe struct {
	Opcode   uint8
	Flags    uint8
	Ioprio   uint16
	Fd       int32
	Off      uint64 // addr2: the sockaddr length for connect and bind
	Addr     uint64
	Len      uint32
	OpFlags  uint32
	UserData uint64
	_        [24]byte
}

type cqe struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

type uring struct {
	fd     int
	sq, cq []byte
	sqes   []byte
	p      uringParams
}

func newUring() (*uring, error) {
	u := &uring{}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&u.p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	u.fd = int(fd)
	sqSize := int(u.p.SQOff.Array + u.p.SQEntries*4)
	cqSize := int(u.p.CQOff.Cqes + u.p.CQEntries*uint32(unsafe.Sizeof(cqe{})))
	var err error
	if u.p.Features&ioringFeatSingleMmap != 0 {
		u.sq, err = unix.Mmap(u.fd, ioringOffSQRing, max(sqSize, cqSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		u.cq = u.sq
	} else {
		if u.sq, err = unix.Mmap(u.fd, ioringOffSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err == nil {
			u.cq, err = unix.Mmap(u.fd, ioringOffCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		}
	}
	if err == nil {
		u.sqes, err = unix.Mmap(u.fd, ioringOffSQEs, int(u.p.SQEntries)*int(unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	}
	if err != nil {
		unix.Close(u.fd)
		return nil, fmt.Errorf("mapping the io_uring: %w", err)
	}
	return u, nil
}

func (u *uring) u32(ring []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&ring[off])) }

// do submits one operation and waits for its completion; it returns the
// result (a negative errno on failure).
func (u *uring) do(op uint8, fd int, sa *unix.RawSockaddrInet4) (int32, error) {
	tail := atomic.LoadUint32(u.u32(u.sq, u.p.SQOff.Tail))
	idx := tail & *u.u32(u.sq, u.p.SQOff.RingMask)
	e := (*sqe)(unsafe.Pointer(&u.sqes[idx*uint32(unsafe.Sizeof(sqe{}))]))
	*e = sqe{Opcode: op, Fd: int32(fd), Addr: uint64(uintptr(unsafe.Pointer(sa))), Off: uint64(unsafe.Sizeof(*sa))}
	*u.u32(u.sq, u.p.SQOff.Array+idx*4) = idx
	atomic.StoreUint32(u.u32(u.sq, u.p.SQOff.Tail), tail+1)
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), 1, 1, ioringEnterGetEvents, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("io_uring_enter: %w", errno)
	}
	head := atomic.LoadUint32(u.u32(u.cq, u.p.CQOff.Head))
	if head == atomic.LoadUint32(u.u32(u.cq, u.p.CQOff.Tail)) {
		return 0, fmt.Errorf("io_uring: no completion")
	}
	c := (*cqe)(unsafe.Pointer(&u.cq[u.p.CQOff.Cqes+(head&*u.u32(u.cq, u.p.CQOff.RingMask))*uint32(unsafe.Sizeof(cqe{}))]))
	res := c.Res
	atomic.StoreUint32(u.u32(u.cq, u.p.CQOff.Head), head+1)
	return res, nil
}

func (u *uring) close() {
	unix.Munmap(u.sqes)
	if &u.cq[0] != &u.sq[0] {
		unix.Munmap(u.cq)
	}
	unix.Munmap(u.sq)
	unix.Close(u.fd)
}

func rawInet4(ip string, port int) *unix.RawSockaddrInet4 {
	sa := &unix.RawSockaddrInet4{Family: unix.AF_INET}
	sa.Addr = sockaddr(ip, port).(*unix.SockaddrInet4).Addr
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return sa
}

// IOUringBindFails is how many io_uring binds of a held port ioUring makes.
const IOUringBindFails = 3

// ioUring exhausts the ports to one destination with plain connect+close
// (TIME_WAIT, tcp_tw_reuse=0), then fails FailAttempts connects through
// io_uring and, where the kernel has IORING_OP_BIND (6.11+), binds of a held
// port. Result.Extra says what io_uring did.
func ioUring(r *Result) error {
	u, err := newUring()
	if err != nil {
		return err
	}
	defer u.close()
	if err := timeWaitPrefill(r); err != nil {
		return err
	}
	r.Extra = map[string]int{}
	for i := 0; i < FailAttempts; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		res, err := u.do(ioringOpConnect, fd, rawInet4("127.0.0.1", ListenPort))
		if err != nil {
			return err
		}
		if unix.Errno(-res) != unix.EADDRNOTAVAIL {
			return fmt.Errorf("io_uring connect %d: want EADDRNOTAVAIL, got %d", i, res)
		}
		r.Extra["uring_connect_failed"]++
		unix.Close(fd)
	}
	for i := 0; i < IOUringBindFails; i++ {
		fd, err := tcpSocket()
		if err != nil {
			return err
		}
		res, err := u.do(ioringOpBind, fd, rawInet4("127.0.0.1", ListenPort))
		if err != nil {
			return err
		}
		unix.Close(fd)
		if unix.Errno(-res) == unix.EINVAL && i == 0 {
			r.Extra["uring_bind_unsupported"] = 1
			break
		}
		if unix.Errno(-res) != unix.EADDRINUSE {
			return fmt.Errorf("io_uring bind %d: want EADDRINUSE, got %d", i, res)
		}
		r.Extra["uring_bind_failed"]++
	}
	return nil
}

// timeWaitPrefill fills every port toward 127.0.0.1:8080 with a TIME_WAIT.
func timeWaitPrefill(r *Result) error {
	if err := Sysctl("tcp_tw_reuse", "0"); err != nil {
		return err
	}
	lfd, err := r.listen("127.0.0.1", ListenPort)
	if err != nil {
		return err
	}
	for i := 0; i < RangeSize; i++ {
		fd, srv, err := r.connectAccepted(lfd, ListenPort)
		if err != nil {
			return fmt.Errorf("prefill connect %d: %w", i, err)
		}
		unix.Close(fd)
		unix.Close(srv)
	}
	return nil
}
