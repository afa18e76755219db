package report

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/portsleuth/portsleuth/internal/event"
	"github.com/portsleuth/portsleuth/internal/netns"
)

// MaxRecordedEvents caps the events a recording keeps.
const MaxRecordedEvents = 10000

// RecordingSchema is the version of the recording format. Version 2 names
// processes by (pid, start time).
const RecordingSchema = 2

// maxKernelRelease bounds a recorded kernel release (utsname's field is 65 bytes).
const maxKernelRelease = 64

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
	// PoolSamples are the report's pool samples; absent in older recordings.
	PoolSamples []PoolSample `json:"pool_samples,omitempty"`
	// Kernel is the release of the kernel it was recorded on (uname -r);
	// absent in older recordings. Reports cite the remedy lab only for the
	// kernel the failures happened on.
	Kernel string `json:"kernel,omitempty"`
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
		s.Failures[k][f.Class] = satAdd(s.Failures[k][f.Class], f.Count)
	}
	for _, u := range r.Unattributed {
		s.Unattributed[u.Class] = satAdd(s.Unattributed[u.Class], u.Count)
	}
	return s
}

// Encode writes the recording as JSON to w.
func (r Recording) Encode(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(r)
}

// Recording limits: a recording is input from a file anyone may hand to a
// root agent, so its size and every table in it are bounded.
const (
	// MaxRecordingBytes bounds the file; checked by fstat and while reading,
	// so a file that grows under us cannot exceed it.
	MaxRecordingBytes = 256 << 20
	// MaxRecordEntries bounds procs, failures, unattributed and netns each:
	// twice the kernel's per-process tables (65,536 entries each), more than
	// --record ever writes, so a larger file is not a recording of ours.
	MaxRecordEntries = 1 << 17
)

// errTooLarge is returned by the reader once the file passes MaxRecordingBytes.
var errTooLarge = fmt.Errorf("larger than %d bytes", MaxRecordingBytes)

// LoadRecording reads a recording written by Encode. It reads only regular
// files (a FIFO would block, /dev/zero never ends), streams the JSON so memory
// follows the tables kept, not the file, and validates every entry: anything
// else is one error line naming the file.
func LoadRecording(path string) (Recording, error) {
	f, err := OpenInput(path)
	if err != nil {
		return Recording{}, fmt.Errorf("recording: %w", err)
	}
	defer f.Close()
	r, err := decodeRecording(&limitReader{r: f, n: MaxRecordingBytes})
	if err != nil {
		return Recording{}, fmt.Errorf("reading recording %s: %w", path, err)
	}
	return r, nil
}

// OpenInput opens a file portsleuth reads (a recording, a report): a
// regular file (a FIFO would block, /dev/zero never ends) of at most
// MaxRecordingBytes. The caller still bounds its reads: the file may grow.
func OpenInput(path string) (*os.File, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %w", err)
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("opening %s: %w", path, err)
	case !fi.Mode().IsRegular():
		f.Close()
		return nil, fmt.Errorf("reading %s: not a regular file (%s)", path, fileKind(fi.Mode()))
	case fi.Size() > MaxRecordingBytes:
		f.Close()
		return nil, fmt.Errorf("reading %s: %d bytes, the limit is %d", path, fi.Size(), MaxRecordingBytes)
	}
	return f, nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// limitReader fails, rather than ends, past n bytes: a truncated read would
// surface as a confusing JSON syntax error.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errTooLarge
	}
	return n, err
}

// reportKeys are top-level fields of a `report -o json` document, which
// people hand to --replay by mistake.
var reportKeys = map[string]bool{"backend": true, "started": true, "duration_seconds": true, "lost_events": true, "processes": true}

const reportHint = "this is a report, not a recording: replay takes files written by --record"

// requiredKeys are the fields every recording Encode writes has.
var requiredKeys = []string{"schema", "procs", "failures", "events"}

// recordingDecoder decodes a recording one entry at a time.
type recordingDecoder struct {
	dec    *json.Decoder
	er     *entryReader
	rec    Recording
	seen   map[string]bool
	schema *int // nil until decoded
}

// maxEntryBytes bounds one entry of a recording (an event is about a
// kilobyte): the decoder holds an entry whole, so one giant string must not
// make it hold the file.
const maxEntryBytes = 1 << 20

var errEntryTooLarge = fmt.Errorf("an entry is larger than %d bytes", maxEntryBytes)

// entryReader fails once the decoder reads more than maxEntryBytes past the
// start of the entry it decodes (mark, its input offset then).
type entryReader struct {
	r    io.Reader
	read int64
	mark int64
}

func (e *entryReader) Read(p []byte) (int, error) {
	if e.read-e.mark > maxEntryBytes {
		return 0, errEntryTooLarge
	}
	n, err := e.r.Read(p)
	e.read += int64(n)
	return n, err
}

// entry marks where the next entry starts.
func (d *recordingDecoder) entry() { d.er.mark = d.dec.InputOffset() }

func decodeRecording(r io.Reader) (Recording, error) {
	er := &entryReader{r: r}
	d := &recordingDecoder{dec: json.NewDecoder(er), er: er, seen: map[string]bool{}}
	d.dec.DisallowUnknownFields()
	if err := d.object(); err != nil {
		return Recording{}, err
	}
	if _, err := d.dec.Token(); err != io.EOF {
		return Recording{}, errors.New("trailing data after the recording")
	}
	return d.rec, nil
}

func (d *recordingDecoder) object() error {
	tok, err := d.dec.Token()
	if err != nil {
		return jsonErr(err)
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("a recording is a JSON object, found %s", tokenKind(tok))
	}
	for d.dec.More() {
		key, err := d.key()
		if err != nil {
			return err
		}
		// The schema comes first; judge it at the next key, which tells a
		// report (schema 1 too) from a recording of another version.
		if d.schema != nil && *d.schema != RecordingSchema {
			return d.schemaErr(key)
		}
		if err := d.field(key); err != nil {
			return err
		}
	}
	if _, err := d.dec.Token(); err != nil {
		return jsonErr(err)
	}
	if d.schema != nil && *d.schema != RecordingSchema {
		return d.schemaErr("")
	}
	for _, k := range requiredKeys {
		if !d.seen[k] {
			return fmt.Errorf("not a recording: no %q field", k)
		}
	}
	return nil
}

func (d *recordingDecoder) schemaErr(nextKey string) error {
	if reportKeys[nextKey] {
		return errors.New(reportHint)
	}
	return fmt.Errorf("schema %d: this portsleuth reads schema %d", *d.schema, RecordingSchema)
}

func (d *recordingDecoder) key() (string, error) {
	tok, err := d.dec.Token()
	if err != nil {
		return "", jsonErr(err)
	}
	key, _ := tok.(string)
	if d.seen[key] {
		return "", fmt.Errorf("field %q appears twice", key)
	}
	d.seen[key] = true
	return key, nil
}

func (d *recordingDecoder) field(key string) error {
	r := &d.rec
	switch key {
	case "schema":
		if err := d.value(key, &r.Schema); err != nil {
			return err
		}
		d.schema = &r.Schema
		return nil
	case "procs":
		return decodeArray(d.dec, d.entry, key, MaxRecordEntries, func(p ProcRecord) error {
			r.Procs = append(r.Procs, p)
			return checkPID(p.PID)
		})
	case "failures":
		return decodeArray(d.dec, d.entry, key, MaxRecordEntries, func(f FailureCount) error {
			r.Failures = append(r.Failures, f)
			return cmp.Or(checkPID(f.PID), checkClass(f.Class))
		})
	case "unattributed":
		return decodeArray(d.dec, d.entry, key, MaxRecordEntries, func(c ClassCount) error {
			r.Unattributed = append(r.Unattributed, c)
			return checkClass(c.Class)
		})
	case "events":
		return decodeArray(d.dec, d.entry, key, MaxRecordedEvents, func(e event.Event) error {
			r.Events = append(r.Events, e)
			return cmp.Or(checkPID(e.PID), checkClass(e.Class))
		})
	case "netns":
		return d.netns()
	case "lost":
		return d.value(key, &r.Lost)
	case "untracked":
		return d.value(key, &r.Untracked)
	case "pool_samples":
		return decodeArray(d.dec, d.entry, key, MaxPoolSamples, func(s PoolSample) error {
			r.PoolSamples = append(r.PoolSamples, s)
			return CheckPoolSample(s)
		})
	case "kernel":
		if err := d.value(key, &r.Kernel); err != nil {
			return err
		}
		if len(r.Kernel) > maxKernelRelease {
			return fmt.Errorf("field %q: %d bytes, a kernel release has at most %d", key, len(r.Kernel), maxKernelRelease)
		}
		return nil
	}
	if reportKeys[key] {
		return errors.New(reportHint)
	}
	// Unknown fields are refused, not dropped: a newer writer's data would
	// otherwise vanish from the report without a word.
	return fmt.Errorf("unknown field %q", key)
}

func (d *recordingDecoder) value(key string, v any) error {
	d.entry()
	if err := d.dec.Decode(v); err != nil {
		return fmt.Errorf("field %q: %w", key, jsonErr(err))
	}
	return nil
}

// netns decodes the namespace table entry by entry.
func (d *recordingDecoder) netns() error {
	tok, err := d.dec.Token()
	if err != nil {
		return fmt.Errorf("field \"netns\": %w", jsonErr(err))
	}
	if tok == nil {
		return nil
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("field \"netns\": want an object, found %s", tokenKind(tok))
	}
	d.rec.Netns = map[uint64]netns.Sysctls{}
	for d.dec.More() {
		tok, err := d.dec.Token()
		if err != nil {
			return fmt.Errorf("field \"netns\": %w", jsonErr(err))
		}
		k, _ := tok.(string)
		ino, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			return fmt.Errorf("field \"netns\": key %q is not a namespace inode", k)
		}
		if len(d.rec.Netns) >= MaxRecordEntries {
			return fmt.Errorf("field \"netns\": more than %d entries", MaxRecordEntries)
		}
		var s netns.Sysctls
		d.entry()
		if err := d.dec.Decode(&s); err != nil {
			return fmt.Errorf("field \"netns\" %d: %w", ino, jsonErr(err))
		}
		if err := checkSysctls(s); err != nil {
			return fmt.Errorf("field \"netns\" %d: %w", ino, err)
		}
		d.rec.Netns[ino] = s
	}
	_, err = d.dec.Token()
	return jsonErr(err)
}

// decodeArray decodes a JSON array (or null) one element at a time, so only
// the kept entries are in memory, never the array's text.
func decodeArray[T any](dec *json.Decoder, entry func(), key string, max int, add func(T) error) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("field %q: %w", key, jsonErr(err))
	}
	if tok == nil {
		return nil // Encode writes an empty table as null
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("field %q: want an array, found %s", key, tokenKind(tok))
	}
	for i := 0; dec.More(); i++ {
		if i >= max {
			return fmt.Errorf("field %q: more than %d entries", key, max)
		}
		var v T
		entry()
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("field %q entry %d: %w", key, i, jsonErr(err))
		}
		if err := add(v); err != nil {
			return fmt.Errorf("field %q entry %d: %w", key, i, err)
		}
	}
	_, err = dec.Token()
	return jsonErr(err)
}

// jsonErr keeps the size limit's error as is and says "truncated" for a
// document that ends early.
func jsonErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("truncated JSON")
	}
	return err
}

func tokenKind(tok json.Token) string {
	switch t := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		if t == '[' {
			return "an array"
		}
		return "an object"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	}
	return "a number"
}

// pidMax is the kernel's PID_MAX_LIMIT (4M): no pid is larger.
const pidMax = 1 << 22

func checkPID(pid uint32) error {
	if pid == 0 || pid > pidMax {
		return fmt.Errorf("pid %d out of range 1..%d", pid, pidMax)
	}
	return nil
}

func checkClass(c event.Class) error {
	switch {
	case c.Op != event.Bind && c.Op != event.Connect && c.Op != event.Listen:
		return fmt.Errorf("op %q is not bind, connect or listen", c.Op)
	case c.Proto != "tcp" && c.Proto != "udp":
		return fmt.Errorf("proto %q is not tcp or udp", c.Proto)
	case c.Family != "ipv4" && c.Family != "ipv6":
		return fmt.Errorf("family %q is not ipv4 or ipv6", c.Family)
	case c.Errno < 1 || c.Errno > 4095: // the kernel's MAX_ERRNO
		return fmt.Errorf("errno %d out of range 1..4095", int64(c.Errno))
	}
	return nil
}

func checkSysctls(s netns.Sysctls) error {
	lo, hi := s.PortRange[0], s.PortRange[1]
	if lo < 1 || lo > hi || hi > 65535 {
		return fmt.Errorf("ip_local_port_range %d-%d: want 1 <= low <= high <= 65535", lo, hi)
	}
	if s.Reserved < 0 || s.Reserved > hi-lo+1 {
		return fmt.Errorf("reserved_in_range %d out of range 0..%d", s.Reserved, hi-lo+1)
	}
	return nil
}

// satAdd adds counts without wrapping: a sum that passes 2^64-1 stays there
// instead of turning small (recorded counts are any uint64).
func satAdd(a, b uint64) uint64 {
	s, carry := bits.Add64(a, b, 0)
	if carry != 0 {
		return math.MaxUint64
	}
	return s
}
