package lab

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// A connect() that fails for lack of a port is retried, as a client would,
// every retryPoll for up to retryWindow in all: long enough for the
// kernel's TIME_WAIT reuse delay (1 s), short enough for an incident.
const (
	retryWindow = 2 * time.Second
	retryPoll   = 20 * time.Millisecond
)

// bindConnect is bind(addr, 0 or a fixed port) + connect(), every
// connection kept open: the bind-before-connect and tuple-conflict shapes.
// Non-blocking: the port is taken (or refused) synchronously, and no
// connection waits for an accept().
func (e *experiment) bindConnect() error {
	if _, err := e.listeners(); err != nil {
		return err
	}
	if e.cfg.keepalive {
		return e.reuseConnections(unix.SOCK_STREAM, e.dest)
	}
	for i := 0; i < e.attempts; i++ {
		fd, err := e.socket(unix.SOCK_STREAM | unix.SOCK_NONBLOCK)
		if err != nil {
			return err
		}
		if ok, err := e.options(fd); !ok {
			return err
		}
		if err := unix.Bind(fd, e.bindAddr(i)); err != nil {
			return e.fail(CallBind, err)
		}
		if err := unix.Connect(fd, e.dest(i)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
			return e.fail(CallConnect, err)
		}
		e.m.Made++
	}
	e.succeeded()
	return nil
}

// bindAddr is what attempt i binds: the wildcard for bind-any, else a source
// address, with port 0 unless the shape fixes the source port.
func (e *experiment) bindAddr(i int) unix.Sockaddr {
	port := 0
	if e.cfg.fixedPort {
		port = fixedPort
	}
	if e.pattern == BindAnyBeforeConnect {
		return &unix.SockaddrInet4{Port: port}
	}
	return loopback(e.src(i), port)
}

// reuseConnections is the control: one connection per destination, each
// attempt a write on one of them.
func (e *experiment) reuseConnections(typ int, dest func(int) unix.Sockaddr) error {
	conns := make([]int, e.cfg.dests)
	for i := range conns {
		fd, err := e.socket(typ)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, dest(i)); err != nil {
			return e.fail(CallConnect, err)
		}
		conns[i] = fd
	}
	for i := 0; i < e.attempts; i++ {
		if _, err := unix.Write(conns[i%len(conns)], []byte{0}); err != nil {
			return fmt.Errorf("writing on a kept-alive connection: %w", err)
		}
		e.m.Made++
	}
	e.succeeded()
	return nil
}

// connectClose is the TIME_WAIT incident: connect, accept, the client
// closes first, over and over; a connect() that finds no port is retried
// within retryWindow.
func (e *experiment) connectClose() error {
	ls, err := e.listeners()
	if err != nil {
		return err
	}
	if e.cfg.keepalive {
		return e.reuseConnections(unix.SOCK_STREAM, e.dest)
	}
	var deadline time.Time
	for i := 0; i < e.attempts; {
		ok, err := e.cycle(i, ls)
		switch {
		case err != nil || e.unavailable != "":
			return err
		case ok:
			e.m.Made++
			i++
			continue
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(retryWindow)
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(retryPoll)
	}
	e.succeeded()
	return nil
}

// cycle makes one connection and closes it, the client first; false when
// connect() found no port (e.m says how).
func (e *experiment) cycle(i int, ls []int) (bool, error) {
	fd, err := e.socket(unix.SOCK_STREAM)
	if err != nil {
		return false, err
	}
	if ok, err := e.connectOne(fd, i); !ok {
		e.closeNow(fd)
		return false, err
	}
	srv, _, err := unix.Accept4(ls[i%len(ls)], unix.SOCK_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("accept: %w", err)
	}
	defer unix.Close(srv)
	if e.cfg.linger0 {
		if err := setLinger0(fd); err != nil {
			return false, fmt.Errorf("setsockopt(SO_LINGER): %w", err)
		}
	}
	e.closeNow(fd) // the client closes first: its side goes to TIME_WAIT
	return true, nil
}

// connectOne sets the options, binds when the config says so, and connects.
func (e *experiment) connectOne(fd, i int) (bool, error) {
	if ok, err := e.options(fd); !ok {
		return false, err
	}
	if e.cfg.noPort {
		if err := unix.Bind(fd, loopback(e.src(i), 0)); err != nil {
			return false, e.fail(CallBind, err)
		}
	}
	if err := unix.Connect(fd, e.dest(i)); err != nil {
		return false, e.fail(CallConnect, err)
	}
	return true, nil
}

// restartServer is a server that binds and listens on its port while
// something holds it: an earlier run's TIME_WAIT, or another listener.
func (e *experiment) restartServer() error {
	sa := loopback(1, serverPort)
	if e.variant == HolderListener {
		if _, err := e.listener(sa, e.cfg.reusePort); err != nil {
			return err
		}
	} else if err := e.earlierRun(sa); err != nil {
		return err
	}
	e.holderNote()
	fd, err := e.socket(unix.SOCK_STREAM)
	if err != nil {
		return err
	}
	if ok, err := e.options(fd); !ok {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return e.fail(CallBind, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return e.fail(CallListen, err)
	}
	e.m.Made = 1
	e.succeeded()
	return nil
}

// holderNote says which options the holder of the port had too.
func (e *experiment) holderNote() {
	var n string
	switch {
	case e.variant == HolderListener && e.cfg.reusePort:
		n = "the listener holding the port set SO_REUSEPORT too (same user)"
	case e.variant == HolderListener:
		n = "the listener holding the port set SO_REUSEADDR"
	case e.cfg.reuseAddr || e.cfg.reusePort || e.cfg.linger0:
		n = "the earlier run (the same program) did the same"
	}
	if n != "" && e.note != "" {
		n = e.note + "; " + n
	}
	if n != "" {
		e.note = n
	}
}

// earlierRun is the same server's previous run: it served one connection
// and closed it first (its side of the connection goes to TIME_WAIT on the
// server port), then exited. It set the same options as the new run.
func (e *experiment) earlierRun(sa unix.Sockaddr) error {
	l, err := e.socket(unix.SOCK_STREAM)
	if err != nil {
		return err
	}
	if ok, err := e.options(l); !ok {
		return err
	}
	if err := unix.Bind(l, sa); err != nil {
		return fmt.Errorf("binding the earlier run: %w", err)
	}
	if err := unix.Listen(l, 16); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	c, err := e.socket(unix.SOCK_STREAM)
	if err != nil {
		return err
	}
	if err := unix.Connect(c, sa); err != nil {
		return fmt.Errorf("connecting to the earlier run: %w", err)
	}
	srv, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	if e.cfg.linger0 {
		if err := setLinger0(srv); err != nil {
			unix.Close(srv)
			return fmt.Errorf("setsockopt(SO_LINGER): %w", err)
		}
	}
	unix.Close(srv)
	e.closeNow(c)
	e.closeNow(l)
	return nil
}

// bindOnly holds sockets bound to (source, 0) that never connect.
func (e *experiment) bindOnly() error {
	for i := 0; i < e.attempts; i++ {
		fd, err := e.socket(unix.SOCK_STREAM)
		if err != nil {
			return err
		}
		if ok, err := e.options(fd); !ok {
			return err
		}
		if err := unix.Bind(fd, loopback(e.src(i), 0)); err != nil {
			return e.fail(CallBind, err)
		}
		e.m.Made++
	}
	e.succeeded()
	return nil
}

func (e *experiment) udpDest(i int) unix.Sockaddr { return loopback(1, udpDestPort+i%e.cfg.dests) }

// udpConnect holds UDP sockets whose connect() picks their port (autobind);
// with more sources they bind (source, 0) first.
func (e *experiment) udpConnect() error {
	if e.cfg.keepalive {
		if err := e.udpReceivers(); err != nil {
			return err
		}
		return e.reuseConnections(unix.SOCK_DGRAM, e.udpDest)
	}
	for i := 0; i < e.attempts; i++ {
		fd, err := e.socket(unix.SOCK_DGRAM)
		if err != nil {
			return err
		}
		if ok, err := e.options(fd); !ok {
			return err
		}
		if e.cfg.sources > 1 {
			if err := unix.Bind(fd, loopback(e.src(i), 0)); err != nil {
				return e.fail(CallBind, err)
			}
		}
		if err := unix.Connect(fd, e.udpDest(i)); err != nil {
			return e.fail(CallConnect, err)
		}
		e.m.Made++
	}
	e.succeeded()
	return nil
}

// udpReceivers bind the UDP destinations, so that writes to them succeed.
func (e *experiment) udpReceivers() error {
	for i := 0; i < e.cfg.dests; i++ {
		fd, err := e.socket(unix.SOCK_DGRAM)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, e.udpDest(i)); err != nil {
			return fmt.Errorf("binding a UDP destination: %w", err)
		}
	}
	return nil
}
