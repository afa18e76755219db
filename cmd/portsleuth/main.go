package main

import (
	"fmt"
	"net"
	"time"

	"github.com/portsleuth/portsleuth/internal/probe"
)

func main() {
	t, err := probe.Start(probe.Options{})
	if err != nil {
		fmt.Println("ERR", err)
		return
	}
	defer t.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:7777")
	_, err = net.Listen("tcp", "127.0.0.1:7777")
	fmt.Println("second listen:", err)
	_ = l
	t.SetDeadline(time.Now().Add(time.Second))
	for {
		e, err := t.Read()
		if err != nil {
			fmt.Println("read:", err)
			break
		}
		fmt.Printf("%+v\n", e)
	}
	s, err := t.Snapshot()
	fmt.Printf("%+v %v\n", s, err)
}
