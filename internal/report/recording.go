package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

// MaxRecordedEvents caps the events a recording keeps.
const MaxRecordedEvents = 10000

// Recording is a traced session saved for later analysis and for offline
// tests (testdata/): what the kernel counted and the events that arrived.
type Recording struct {
	Procs     map[uint32]event.ProcStats `json:"procs"`
	Meta      map[uint32]event.ProcMeta  `json:"meta"`
	Failures  []FailureCount             `json:"failures"`
	Netns     map[uint64]netns.Sysctls   `json:"netns"`
	Lost      uint64                     `json:"lost"`
	Untracked uint64                     `json:"untracked,omitempty"`
	Events    []event.Event              `json:"events"`
}

// FailureCount is one entry of the kernel's failure counters.
type FailureCount struct {
	PID   uint32      `json:"pid"`
	Class event.Class `json:"class"`
	Count uint64      `json:"count"`
}

// NewRecording captures a snapshot and the events that came with it.
func NewRecording(s event.Snapshot, events []event.Event) Recording {
	r := Recording{Procs: s.Procs, Meta: s.Meta, Netns: s.Netns, Lost: s.Lost, Untracked: s.Untracked, Events: events}
	for pid, classes := range s.Failures {
		for c, n := range classes {
			r.Failures = append(r.Failures, FailureCount{pid, c, n})
		}
	}
	return r
}

// Snapshot turns the recording back into the kernel's counters.
func (r Recording) Snapshot() event.Snapshot {
	s := event.Snapshot{Procs: r.Procs, Meta: r.Meta, Netns: r.Netns, Lost: r.Lost, Untracked: r.Untracked,
		Failures: map[uint32]map[event.Class]uint64{}}
	for _, f := range r.Failures {
		if s.Failures[f.PID] == nil {
			s.Failures[f.PID] = map[event.Class]uint64{}
		}
		s.Failures[f.PID][f.Class] += f.Count
	}
	return s
}

// Encode writes the recording as JSON to w.
func (r Recording) Encode(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(r)
}

// Save writes the recording as JSON.
func (r Recording) Save(path string) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing recording: %w", err)
	}
	return nil
}

// LoadRecording reads a recording written by Save.
func LoadRecording(path string) (Recording, error) {
	var r Recording
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("parsing recording %s: %w", path, err)
	}
	return r, nil
}
