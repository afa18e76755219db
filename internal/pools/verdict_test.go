package pools

import (
	"strings"
	"testing"
)

// The seed's own shape: bind-before-connect to 4 destinations in a 64-port
// range leaves 16 connections to each, and 48 ports held by bind() owners
// for every destination. The verdict and the snapshot line say so.
func TestVerdictCountsBindOwnedPorts(t *testing.T) {
	full := ConnectPool{Local: "127.0.0.1", Dest: "127.0.0.1:8080", Established: 16, BindOwned: 48, Size: 64, PercentUsed: 100}
	for _, c := range []struct {
		name string
		pool ConnectPool
		want string
	}{
		{"bind-owned", full,
			"connect pool to 127.0.0.1:8080 from 127.0.0.1 is 100% full: 0 TIME_WAIT, 16 established, 48 held by bind()/listen() owners for every destination, 0 free"},
		{"none bind-owned", ConnectPool{Local: "127.0.0.1", Dest: "127.0.0.1:8080", Established: 10, TimeWait: 20, Free: 34, Size: 64, PercentUsed: 46.9},
			"no pool is under pressure; fullest: connect pool to 127.0.0.1:8080 from 127.0.0.1 is 47% full: 20 TIME_WAIT, 10 established, 34 free"},
		{"thousands", ConnectPool{Local: "10.0.0.1", Dest: "10.0.0.2:443", Established: 1200, BindOwned: 26932, Size: 28132, PercentUsed: 100},
			"connect pool to 10.0.0.2:443 from 10.0.0.1 is 100% full: 0 TIME_WAIT, 1,200 established, 26,932 held by bind()/listen() owners for every destination, 0 free"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := Namespace{ConnectPools: []ConnectPool{c.pool}}
			if got := verdict(ns); got != c.want {
				t.Errorf("verdict\n got %q\nwant %q", got, c.want)
			}
		})
	}

	s := &Snapshot{Verdict: "v", ConnectPool: &full}
	want := "at the first failure, the connect pool to 127.0.0.1:8080 from 127.0.0.1 was 100% full (16 established, 0 TIME_WAIT, 48 held by bind()/listen() owners for every destination, 0 free); namespace: v"
	if got := s.Text(); got != want {
		t.Errorf("snapshot text\n got %q\nwant %q", got, want)
	}
	full.BindOwned = 0
	if got := s.Text(); strings.Contains(got, "bind()") {
		t.Errorf("snapshot text names bind() owners that are not there: %q", got)
	}
}
