package probe

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/portsleuth/portsleuth/gen"
	"github.com/portsleuth/portsleuth/internal/event"
)

// Floor is a backend's hook set with programs that do nothing: what having
// the hooks attached at all costs (dispatch, trampolines, an enabled
// tracepoint), below which no work in the programs can go.
type Floor struct {
	links []link.Link
	progs []*ebpf.Program
	names []string
	mount *ownMount
}

// StartFloor attaches bpf/floor.bpf.c's empty programs on exactly the hooks
// backend b attaches.
func StartFloor(b Backend) (_ *Floor, err error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit: %w", err)
	}
	spec, err := gen.LoadFloor()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded floor object: %w", err)
	}
	cgroupRoot, mnt, err := b.mountFS()
	if err != nil {
		return nil, err
	}
	f := &Floor{mount: mnt}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	hooks := b.hooks(spec, cgroupRoot)
	if len(hooks) == 0 {
		return nil, fmt.Errorf("no floor programs for the %s backend", b)
	}
	coll, err := load(spec, hooks, b)
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	for _, h := range hooks {
		prog := coll.DetachProgram(h.name)
		f.progs = append(f.progs, prog)
		f.names = append(f.names, h.name)
		l, err := h.attach(prog)
		if err != nil {
			return nil, fmt.Errorf("attaching the floor's %s: %w", h.what, err)
		}
		if l != nil {
			f.links = append(f.links, l)
		}
	}
	return f, nil
}

// Close detaches and unloads the floor's programs.
func (f *Floor) Close() error {
	var errs []error
	for _, l := range f.links {
		errs = append(errs, l.Close())
	}
	for _, p := range f.progs {
		errs = append(errs, p.Close())
	}
	errs = append(errs, f.mount.release())
	return errors.Join(errs...)
}

// ProgramStats reads each empty program's run time and count (see
// Tracer.ProgramStats): the statistics' own cost per run.
func (f *Floor) ProgramStats() (map[string]event.ProgramStats, error) {
	return programStats(f.progs, f.names)
}
