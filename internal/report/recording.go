package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

// MaxRecordedEvents caps the events a recording keeps.
const MaxRecordedEvents = 10000

// RecordingSchema is the version of the recording format. Version 2 names
// processes by (pid, start time).
const RecordingSchema = 2

// Recording is a traced session saved for later analysis and for offline
// tests (testdata/): what the kernel counted and the events that arrived.
type Recording struct {
	Schema       int                      `json:"schema"`
	Procs        []ProcRecord             `json:"procs"`
	Failures     []FailureCount           `json:"failures"`
	Unattributed []ClassCount             `json:"unattributed,omitempty"`
	Netns        map[uint64]netns.Sysctls `json:"netns"`
	Lost         uint64                   `json:"lost"`
	Untracked    uint64                   `json:"untracked,omitempty"`
	Events       []event.Event            `json:"events"`
}

// ProcRecord is what the kernel kept about one process.
type ProcRecord struct {
	PID   uint32           `json:"pid"`
	Start uint64           `json:"start_ns"`
	Stats *event.ProcStats `json:"stats,omitempty"`
	Meta  *event.ProcMeta  `json:"meta,omitempty"`
}

// FailureCount is one entry of the kernel's failure counters.
type FailureCount struct {
	PID   uint32      `json:"pid"`
	Start uint64      `json:"start_ns"`
	Class event.Class `json:"class"`
	Count uint64      `json:"count"`
}

// ClassCount is a count of one failure class.
type ClassCount struct {
	Class event.Class `json:"class"`
	Count uint64      `json:"count"`
}

// NewRecording captures a snapshot and the events that came with it.
func NewRecording(s event.Snapshot, events []event.Event) Recording {
	r := Recording{Schema: RecordingSchema, Netns: s.Netns, Lost: s.Lost, Untracked: s.Untracked, Events: events}
	procs := map[event.ProcKey]*ProcRecord{}
	rec := func(k event.ProcKey) *ProcRecord {
		p := procs[k]
		if p == nil {
			p = &ProcRecord{PID: k.PID, Start: k.Start}
			procs[k] = p
		}
		return p
	}
	for k, st := range s.Procs {
		rec(k).Stats = &st
	}
	for k, m := range s.Meta {
		rec(k).Meta = &m
	}
	for k, classes := range s.Failures {
		for _, c := range sortedClasses(classes) {
			r.Failures = append(r.Failures, FailureCount{k.PID, k.Start, c, classes[c]})
		}
	}
	for _, c := range sortedClasses(s.Unattributed) {
		r.Unattributed = append(r.Unattributed, ClassCount{c, s.Unattributed[c]})
	}
	for _, p := range procs {
		r.Procs = append(r.Procs, *p)
	}
	slices.SortFunc(r.Procs, func(a, b ProcRecord) int {
		return cmp.Or(cmp.Compare(a.PID, b.PID), cmp.Compare(a.Start, b.Start))
	})
	slices.SortStableFunc(r.Failures, func(a, b FailureCount) int {
		return cmp.Or(cmp.Compare(a.PID, b.PID), cmp.Compare(a.Start, b.Start))
	})
	return r
}

// Save writes the recording to path (kept until the CLI writes through outfile).
func (r Recording) Save(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("writing recording: %w", err)
	}
	if err := r.Encode(f); err != nil {
		f.Close()
		return fmt.Errorf("writing recording: %w", err)
	}
	return f.Close()
}

// Snapshot turns the recording back into the kernel's counters.
func (r Recording) Snapshot() event.Snapshot {
	s := event.Snapshot{
		Procs: map[event.ProcKey]event.ProcStats{}, Meta: map[event.ProcKey]event.ProcMeta{},
		Failures: map[event.ProcKey]map[event.Class]uint64{}, Unattributed: map[event.Class]uint64{},
		Netns: r.Netns, Lost: r.Lost, Untracked: r.Untracked,
	}
	for _, p := range r.Procs {
		k := event.ProcKey{PID: p.PID, Start: p.Start}
		if p.Stats != nil {
			s.Procs[k] = *p.Stats
		}
		if p.Meta != nil {
			s.Meta[k] = *p.Meta
		}
	}
	for _, f := range r.Failures {
		k := event.ProcKey{PID: f.PID, Start: f.Start}
		if s.Failures[k] == nil {
			s.Failures[k] = map[event.Class]uint64{}
		}
		s.Failures[k][f.Class] += f.Count
	}
	for _, u := range r.Unattributed {
		s.Unattributed[u.Class] += u.Count
	}
	return s
}

// Encode writes the recording as JSON to w.
func (r Recording) Encode(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(r)
}

// LoadRecording reads a recording written by Encode.
func LoadRecording(path string) (Recording, error) {
	var r Recording
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("parsing recording %s: %w", path, err)
	}
	if r.Schema != RecordingSchema {
		return r, fmt.Errorf("recording %s has schema %d: this portsleuth reads schema %d", path, r.Schema, RecordingSchema)
	}
	return r, nil
}
