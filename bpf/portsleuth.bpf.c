// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* portsleuth's BPF programs: one object holding every backend. Go deletes the
 * programs of the backends it does not use before loading. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "state.h"
#include "syscall.h"
#include "kfunc.h"
#include "cgroup.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* report -- CMD: a process forked by one of the command's tree joins it.
 * Attached only then. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(ps_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ppid = BPF_CORE_READ(parent, tgid), cpid = BPF_CORE_READ(child, tgid);
	__u64 *start, child_start;

	if (ppid == cpid)
		return 0; /* a thread */
	start = bpf_map_lookup_elem(&tree, &ppid);
	if (!start || (*start && *start != BPF_CORE_READ(parent, group_leader, start_time)))
		return 0;
	child_start = BPF_CORE_READ(child, start_time);
	bpf_map_update_elem(&tree, &cpid, &child_start, BPF_ANY);
	return 0;
}

/* Who closed a connection first, for the fentry, kprobe and tracepoint
 * backends (the cgroup backend's own inet_sock_set_state program does it).
 * Returns at its first comparison for every other state change. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ps_closer, struct sock *sk, int oldstate, int newstate)
{
	if (newstate == TCP_FIN_WAIT1 && oldstate == TCP_ESTABLISHED)
		record_closer(sk);
	return 0;
}

/* Keep the event struct and the enums in BTF so bpf2go emits them as Go constants. */
const struct ps_event *_ps_event __attribute__((unused));
const enum ps_op *_ps_op __attribute__((unused));
const enum ps_opt *_ps_opt __attribute__((unused));
const enum ps_flag *_ps_flag __attribute__((unused));
const enum ps_source *_ps_source __attribute__((unused));
const enum ps_meta_flag *_ps_meta_flag __attribute__((unused));
const enum ps_sweep_ns *_ps_sweep_ns __attribute__((unused));
