/* Maps and the logic every backend shares: a call is begun with what is known
 * when it starts (socket, options, requested addresses) and finished with its
 * result. Finishing counts the call per process and, for a failure, per
 * failure class, and streams the failure through the ring buffer. */
#ifndef PORTSLEUTH_STATE_H
#define PORTSLEUTH_STATE_H

#include "common.h"
#include "sock.h"
#include "closer.h"

#define EPERM 1
#define EAGAIN 11
#define EACCES 13
#define EADDRINUSE 98
#define EADDRNOTAVAIL 99
#define EINPROGRESS 115
#define EEXIST 17

/* Set from Go before load. target_pid 0 traces every process. The inet_flags
 * bit numbers come from an anonymous enum in the kernel's BTF (6.6+). */
const volatile __u32 target_pid = 0;
const volatile __u32 inet_flags_freebind_bit = 11;
const volatile __u32 inet_flags_transparent_bit = 15;
const volatile __u32 inet_flags_bind_no_port_bit = 18;

/* A bind/connect between its start and its result. */
struct call {
	__u64 sock_ino;
	__u64 netns;
	__u64 sk;       /* struct sock *; a map value holds no pointer types */
	__u64 cand;     /* kernel layer: the owner inet_bind_conflict is judging */
	__u64 holder;   /* kernel layer: the last owner found in conflict */
	__u8 laddr[16]; /* 8-byte aligned: is_zero16 reads it as two words */
	__u8 daddr[16];
	__u16 options;
	__u16 flags;
	__u8 op;
	__u8 family;
	__u8 proto;
	__u8 state;
	__u16 lport;
	__u16 dport;
	__u32 tw_blocked; /* kernel layer: candidates blocked by TIME_WAIT */
	__u32 chk_failed; /* kernel layer: candidates whose 4-tuple was taken */
	__u8 source;
	__u8 port0_bound; /* connect: a port-0 bind gave the TCP socket its port */
	__u8 _pad[2];
};

/* Pending ring-buffer bytes that wake the reader: about 1024 events, a fifth
 * of what the buffer holds. In a storm each wakeup costs the agent a trip
 * through epoll (two thirds of its CPU at 256 events per wakeup); the four
 * fifths left absorb a reader that is slow to run. */
#define WAKEUP_BYTES (1024 * (sizeof(struct ps_event) + 8))

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct call);
} calls SEC(".maps");

/* Bounds stated in the README: FAIL_ENTRIES (process, failure class) pairs and
 * as many failing processes' identities are kept whatever else runs on the
 * host; successful calls never enter either table. */
#define FAIL_ENTRIES 65536

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ps_proc_key);
	__type(value, struct ps_proc_stats);
} proc_stats SEC(".maps");

/* Not an LRU: a failing process's identity is never evicted by other
 * processes (Go deletes records of processes long gone). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FAIL_ENTRIES);
	__type(key, struct ps_proc_key);
	__type(value, struct ps_proc_meta);
} proc_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* netns inode */
	__type(value, struct ps_netns);
} netns_info SEC(".maps");

/* Not an LRU: a count is never evicted. When it is full, a failure is
 * counted in fail_overflow by its class alone: totals stay exact and the
 * report says how many failures it could not give a process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FAIL_ENTRIES);
	__type(key, struct ps_fail_key);
	__type(value, __u64);
} fail_counts SEC(".maps");

/* Keyed by class (pid and start_ns zero): a few hundred classes exist. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ps_fail_key);
	__type(value, __u64);
} fail_overflow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* report -- CMD: the processes descended (by fork) from portsleuth, which
 * starts only CMD: tgid -> start time (0: any, for portsleuth itself). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} tree SEC(".maps");

/* Index 0: failures that found the ring buffer full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* struct local_ports before 6.3: the range as two ints (since, one packed u32). */
struct local_ports___old {
	int range[2];
} __attribute__((preserve_access_index));

/* Layout of struct inet_sock before 6.6 moved these bits into inet_flags. */
struct inet_sock___old {
	__u8 freebind : 1;
	__u8 transparent : 1;
	__u8 bind_address_no_port : 1;
	__u8 _unused : 5;
} __attribute__((preserve_access_index));

static __always_inline int traced_pid(__u64 id)
{
	return !target_pid || (id >> 32) == target_pid;
}

/* The options struct inet_sock keeps: IP_FREEBIND, IP_TRANSPARENT,
 * IP_BIND_ADDRESS_NO_PORT (bits of inet_flags since 6.6, bitfields before). */
static __always_inline __u16 inet_options(struct sock *sk)
{
	struct inet_sock *inet = (void *)sk;
	__u16 o = 0;

	if (bpf_core_field_exists(inet->inet_flags)) {
		unsigned long f = BPF_CORE_READ(inet, inet_flags);

		if (f & (1UL << inet_flags_freebind_bit))
			o |= PS_OPT_FREEBIND;
		if (f & (1UL << inet_flags_transparent_bit))
			o |= PS_OPT_TRANSPARENT;
		if (f & (1UL << inet_flags_bind_no_port_bit))
			o |= PS_OPT_BIND_ADDRESS_NO_PORT;
	} else {
		struct inet_sock___old *old = (void *)sk;

		if (BPF_CORE_READ_BITFIELD_PROBED(old, freebind))
			o |= PS_OPT_FREEBIND;
		if (BPF_CORE_READ_BITFIELD_PROBED(old, transparent))
			o |= PS_OPT_TRANSPARENT;
		if (BPF_CORE_READ_BITFIELD_PROBED(old, bind_address_no_port))
			o |= PS_OPT_BIND_ADDRESS_NO_PORT;
	}
	return o;
}

/* Every option portsleuth reports, as set on the kernel socket. */
static __always_inline __u16 sock_options(struct sock *sk)
{
	struct sock_common *skc = &sk->__sk_common;
	__u16 o = skc_reuse_options(skc) | inet_options(sk);

	if (BPF_CORE_READ_BITFIELD_PROBED(skc, skc_ipv6only))
		o |= PS_OPT_V6ONLY;
	return o;
}

static __always_inline int is_zero16(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;

	return (w[0] | w[1]) == 0;
}

/* The socket's own local address. */
static __always_inline void sock_laddr(struct sock *sk, __u8 family, __u8 *addr)
{
	if (family == AF_INET)
		bpf_core_read(addr, 4, &sk->__sk_common.skc_rcv_saddr);
	else
		bpf_core_read(addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
}

/* The socket's own local address and port (host order). */
static __always_inline void sock_local(struct sock *sk, __u8 family, __u8 *addr, __u16 *port)
{
	*port = BPF_CORE_READ(sk, __sk_common.skc_num);
	sock_laddr(sk, family, addr);
}

/* The local address of a connecting socket, if bind() set it: otherwise the
 * kernel fills in a route's source address that no call asked for. */
static __always_inline void sock_bound_laddr(struct sock *sk, __u8 family, __u8 *addr)
{
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_userlocks) & SOCK_BINDADDR_LOCK)
		sock_laddr(sk, family, addr);
}

/* Adds one to index 0 of a per-CPU counter array. */
static __always_inline void percpu_inc(void *map)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(map, &zero);

	if (n)
		(*n)++;
}

/* Parses a sockaddr copy for a socket of this family. Returns -1 for a
 * family that says "disconnect" (AF_UNSPEC connect) or is not ours. */
static __always_inline int parse_sockaddr(const __u8 *sa, __u8 family, __u8 *addr, __u16 *port)
{
	__u16 sa_family = *(const __u16 *)sa;

	*port = ((__u16)sa[2] << 8) | sa[3];
	if (family == AF_INET) {
		/* An IPv4 bind accepts AF_UNSPEC for INADDR_ANY. */
		if (sa_family != AF_INET && sa_family != 0)
			return -1;
		__builtin_memcpy(addr, sa + 4, 4);
		return 0;
	}
	if (sa_family != AF_INET6)
		return -1;
	__builtin_memcpy(addr, sa + 8, 16);
	return 0;
}

/* Fills what every call knows of its socket. Returns -1 for sockets that are
 * not TCP or UDP over IPv4/IPv6. */
/* Whether a TCP socket about to connect holds a port a port-0 bind gave it
 * (bound, with no port asked for): the bind-before-connect trap. The rule
 * every backend uses: no per-socket state remembers the bind. */
static __always_inline __u8 port0_bound(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_num) != 0 &&
	       !(BPF_CORE_READ_BITFIELD_PROBED(sk, sk_userlocks) & SOCK_BINDPORT_LOCK);
}

static __always_inline int call_init(struct call *c, __u8 op, __u8 source, struct sock *sk)
{
	__u16 family;

	if (!sk)
		return -1;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return -1;
	c->proto = BPF_CORE_READ(sk, sk_protocol);
	if (c->proto != IPPROTO_TCP && c->proto != IPPROTO_UDP)
		return -1;
	c->op = op;
	c->source = source;
	c->family = family;
	c->sk = (__u64)sk;
	c->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	c->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	c->options = sock_options(sk);
	if (op == PS_OP_CONNECT && c->proto == IPPROTO_TCP)
		c->port0_bound = port0_bound(sk);
	return 0;
}

/* Derives the failure-class flags and keeps the call until its result. */
static __always_inline void call_store(__u64 id, struct call *c)
{
	if (c->lport == 0)
		c->flags |= PS_F_PORT0;
	if (is_zero16(c->laddr))
		c->flags |= PS_F_ANYADDR;
	bpf_map_update_elem(&calls, &id, c, BPF_ANY);
}

static __always_inline struct ps_proc_stats *proc_stats_of(__u32 pid, __u64 start_ns)
{
	struct ps_proc_key k = { .start_ns = start_ns, .pid = pid };
	struct ps_proc_stats *s = bpf_map_lookup_elem(&proc_stats, &k);
	struct ps_proc_stats zero = {};

	if (s)
		return s;
	bpf_map_update_elem(&proc_stats, &k, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&proc_stats, &k);
}

/* Adds one to key k of a counter hash: 1 when this created the entry, 0
 * when it existed, negative when the map is full. The helper's error is an
 * int: compared as one, since not every kernel sign-extends it into the
 * 64-bit return register (6.1 handed -E2BIG back as a large positive). */
static __always_inline int count_in(void *map, struct ps_fail_key *k)
{
	__u64 one = 1, *n = bpf_map_lookup_elem(map, k);
	int err;

	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	err = bpf_map_update_elem(map, k, &one, BPF_NOEXIST);
	if (!err)
		return 1;
	if (err != -EEXIST)
		return err;
	/* Another CPU created it first. */
	n = bpf_map_lookup_elem(map, k);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

/* Counts a failure; 1 when it is the first of its (process, class). */
static __always_inline int count_failure(struct ps_fail_key *k)
{
	int r = count_in(&fail_counts, k);

	if (r >= 0)
		return r;
	k->pid = 0;
	k->start_ns = 0;
	count_in(&fail_overflow, k);
	return 0;
}

/* The namespace's ephemeral port range (ip_local_port_range). */
static __always_inline void port_range(struct net *net, __u16 *lo, __u16 *hi)
{
	/* Field matching is by name and type: the old int[2] only matches before 6.3. */
	struct local_ports___old *lp = (void *)&net->ipv4.ip_local_ports;

	if (bpf_core_field_exists(lp->range)) {
		*lo = BPF_CORE_READ(lp, range[0]);
		*hi = BPF_CORE_READ(lp, range[1]);
	} else {
		__u32 r = BPF_CORE_READ(net, ipv4.ip_local_ports.range);

		*lo = r & 0xffff;
		*hi = r >> 16;
	}
}

/* A namespace's identity for as long as the system runs: net_cookie, a u64
 * set at creation since 5.12. Before, it was an atomic64_t, which CO-RE does
 * not match with a u64: 0 there, as on kernels without the field. */
static __always_inline __u64 netns_cookie(struct net *net)
{
	__u64 cookie = 0;

	if (bpf_core_field_exists(net->net_cookie))
		bpf_core_read(&cookie, sizeof(cookie), &net->net_cookie);
	return cookie;
}

/* Reads the namespace's port sysctls from struct net at its first failure: a
 * short-lived namespace is gone before Go could look. An entry left by an
 * earlier namespace with the same inode number (destroyed since) is
 * replaced: kept, it would give this one the other's sysctls. Returns the
 * namespace's cookie (0: none). */
static __always_inline __u64 snapshot_netns(struct sock *sk, __u64 inum)
{
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	struct ps_netns ns = {}, *known;
	__u64 cookie = netns_cookie(net);

	/* Without a cookie the struct's address stands in (it stays in this map:
	 * Go never prints it, events never carry it). A weak stand-in: the next
	 * namespace often gets both the freed number and the freed struct, so
	 * before 5.12 a reused number can still keep the old sysctls. */
	ns.cookie = cookie ? cookie : (__u64)net;
	known = bpf_map_lookup_elem(&netns_info, &inum);
	if (known && known->cookie == ns.cookie)
		return cookie;
	port_range(net, &ns.port_lo, &ns.port_hi);
	/* Sysctl widths differ between releases (u8 or int): read each by the
	 * kernel's own size, as every sysctl read here is. */
	ns.tcp_tw_reuse = BPF_CORE_READ_BITFIELD_PROBED(net, ipv4.sysctl_tcp_tw_reuse);
	ns.tcp_timestamps = BPF_CORE_READ_BITFIELD_PROBED(net, ipv4.sysctl_tcp_timestamps);
	ns.ip_nonlocal_bind = BPF_CORE_READ_BITFIELD_PROBED(net, ipv4.sysctl_ip_nonlocal_bind);
	ns.ip_autobind_reuse = 0xff;
	if (bpf_core_field_exists(net->ipv4.sysctl_ip_autobind_reuse))
		ns.ip_autobind_reuse = BPF_CORE_READ_BITFIELD_PROBED(net, ipv4.sysctl_ip_autobind_reuse);
	bpf_map_update_elem(&netns_info, &inum, &ns, BPF_ANY);
	return cookie;
}

/* Who made a call. The cgroup backend may learn a call's outcome in another
 * task's context (a socket's release, the sweeper), so it keeps this from the
 * call's start; the other backends fill it when the call returns. */
struct who {
	__u64 id;        /* pid_tgid */
	__u64 cgroup_id; /* cgroup v2 id */
	__u64 start_ns;  /* the thread-group leader's start time */
	char comm[16];   /* thread-group leader's name */
	char tcomm[16];  /* the thread's name */
};

/* Reads everything from the task: no helper that some program types lack. */
static __always_inline void who_of(struct who *w, struct task_struct *task)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	w->id = ((__u64)BPF_CORE_READ(task, tgid) << 32) | (__u32)BPF_CORE_READ(task, pid);
	w->cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	w->start_ns = BPF_CORE_READ(leader, start_time);
	bpf_probe_read_kernel_str(w->comm, sizeof(w->comm), &leader->comm);
	bpf_probe_read_kernel_str(w->tcomm, sizeof(w->tcomm), &task->comm);
}

/* Records who the process is the first time it fails. The command line is read only from the caller's own memory: when
 * the outcome is learnt in another task, Go reads it from /proc instead. */
/* A zero record to create proc_meta entries from: the record is filled in
 * place, which keeps 176 bytes off a stack the cgroup backend needs. */
static const struct ps_proc_meta zero_meta;

static __always_inline void record_meta(struct who *w, __u64 netns)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u32 pid = w->id >> 32;
	struct ps_proc_key k = { .start_ns = w->start_ns, .pid = pid };
	struct ps_proc_meta *meta;
	unsigned long start, end;
	__u64 len;

	if (bpf_map_lookup_elem(&proc_meta, &k))
		return;
	/* Only the task that creates the entry fills it; a full table leaves
	 * the process to be named from /proc. */
	if (bpf_map_update_elem(&proc_meta, &k, &zero_meta, BPF_NOEXIST))
		return;
	meta = bpf_map_lookup_elem(&proc_meta, &k);
	if (!meta)
		return;
	meta->netns = netns;
	meta->cgroup_id = w->cgroup_id;
	if (BPF_CORE_READ(task, tgid) == pid) {
		struct task_struct *parent = BPF_CORE_READ(task, group_leader, real_parent);

		meta->ppid = BPF_CORE_READ(parent, tgid);
		meta->parent_start_ns = BPF_CORE_READ(parent, group_leader, start_time);
	}
	__u64 *tree_start = bpf_map_lookup_elem(&tree, &pid);

	if (tree_start && (!*tree_start || *tree_start == w->start_ns))
		meta->flags |= PS_META_IN_COMMAND;
	__builtin_memcpy(meta->comm, w->comm, sizeof(meta->comm));
	if (BPF_CORE_READ(task, tgid) == pid) {
		start = BPF_CORE_READ(task, mm, arg_start);
		end = BPF_CORE_READ(task, mm, arg_end);
		len = end - start;
		if (len > sizeof(meta->args) - 1)
			len = sizeof(meta->args) - 1;
		bpf_probe_read_user(meta->args, len & (sizeof(meta->args) - 1), (void *)start);
	}
	meta->flags |= PS_META_FILLED;
}

/* Describes the socket that holds the port. TIME_WAIT and request sockets
 * are only a sock_common: no options beyond it, no socket inode. */
static __always_inline void record_holder(struct ps_event *e, struct sock *h, __u8 family)
{
	struct sock_common *skc = &h->__sk_common;

	e->holder_state = BPF_CORE_READ(skc, skc_state);
	skc_endpoints(skc, family, e->holder_laddr, e->holder_daddr, &e->holder_lport, &e->holder_dport);
	e->holder_options = skc_reuse_options(skc);
	if (e->holder_state != TCP_TIME_WAIT && e->holder_state != TCP_NEW_SYN_RECV)
		e->holder_ino = sk_ino(h);
}

/* Remembers the process that is closing an established connection (the
 * caller's context: close() or shutdown()), for its TIME_WAIT to come. Only
 * for a local port in the ephemeral range, the pool TIME_WAITs starve: a
 * server's accepted connections keep its listening port. For tp_btf
 * programs only: sk and the current task are BTF pointers (plain loads). */
static __always_inline void record_closer(struct sock *sk)
{
	struct task_struct *leader;
	struct ps_closer v = {};
	__u16 port = sk->__sk_common.skc_num, lo, hi;
	__u64 cookie;

	port_range(sk->__sk_common.skc_net.net, &lo, &hi);
	if (port < lo || port > hi)
		return;
	v.pid = bpf_get_current_pid_tgid() >> 32;
	if (!v.pid)
		return; /* a kernel thread: no process to name */
	leader = bpf_get_current_task_btf()->group_leader;
	v.start_ns = leader->start_time;
	bpf_probe_read_kernel_str(v.comm, sizeof(v.comm), &leader->comm);
	cookie = bpf_get_socket_cookie(sk);
	bpf_map_update_elem(&closers, &cookie, &v, BPF_ANY);
}

/* A global function: the verifier checks it once per program instead of at
 * every call site, which keeps load time (and the launch -> attached time)
 * down. Its pointers are never NULL; the verifier wants the check anyway. */
__attribute__((noinline)) int record_failure(struct call *c, struct who *w, int err)
{
	__u32 pid;
	struct ps_fail_key k = {};
	struct ps_event *e;
	__u64 cookie;
	int first;

	if (!c || !w)
		return 0;
	pid = w->id >> 32;
	k.start_ns = w->start_ns;
	k.pid = pid;
	k.err = err;
	k.op = c->op;
	k.proto = c->proto;
	k.family = c->family;
	k.flags = (__u8)c->flags;
	/* Who failed, and the namespace's sysctls, are recorded before the
	 * failure is counted: a reader that sees the count (it reads the counts
	 * first) then finds both. */
	record_meta(w, c->netns);
	cookie = snapshot_netns((struct sock *)c->sk, c->netns);
	first = count_failure(&k);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		percpu_inc(&lost);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->netns = c->netns;
	e->netns_cookie = cookie;
	e->cgroup_id = w->cgroup_id;
	e->start_ns = w->start_ns;
	e->sock_ino = c->sock_ino;
	e->pid = pid;
	e->tid = (__u32)w->id;
	e->err = err;
	e->options = c->options;
	e->flags = c->flags;
	e->op = c->op;
	e->family = c->family;
	e->proto = c->proto;
	e->state = c->state;
	e->lport = c->lport;
	e->dport = c->dport;
	__builtin_memcpy(e->laddr, c->laddr, 16);
	__builtin_memcpy(e->daddr, c->daddr, 16);
	__builtin_memcpy(e->comm, w->comm, sizeof(e->comm));
	__builtin_memcpy(e->tcomm, w->tcomm, sizeof(e->tcomm));
	e->tw_blocked = c->tw_blocked;
	e->est_blocked = c->chk_failed > c->tw_blocked ? c->chk_failed - c->tw_blocked : 0;
	e->source = c->source;
	e->holder_ino = 0;
	e->holder_state = 0;
	e->holder_options = 0;
	e->holder_lport = 0;
	e->holder_dport = 0;
	__builtin_memset(e->holder_laddr, 0, sizeof(e->holder_laddr));
	__builtin_memset(e->holder_daddr, 0, sizeof(e->holder_daddr));
	e->_pad = 0;
	if (c->holder && err == EADDRINUSE)
		record_holder(e, (struct sock *)c->holder, c->family);
	/* Wake the reader once a batch waits: in a storm a wakeup per event
	 * costs more than the event. The first failure of a (process, class)
	 * wakes it at once: the agent looks at the namespace for it (holders,
	 * pool pressure) while the failure's circumstances still stand. Other
	 * events wait for the reader's next poll (its deadline tick, 200 ms). */
	bpf_ringbuf_submit(e, first || bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ?
				      BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

/* Failures worth a culprit: address and port errors, not EINVAL-style misuse. */
static __always_inline int bind_traced(int err)
{
	return err == EADDRINUSE || err == EADDRNOTAVAIL || err == EACCES || err == EPERM;
}

static __always_inline int connect_traced(int err)
{
	return err == EADDRNOTAVAIL || err == EADDRINUSE || err == EAGAIN || err == EPERM;
}

/* Counts a finished bind (ret: 0 or -errno) and streams it if it failed. */
static __always_inline void finish_bind(struct ps_proc_stats *s, struct call *c, struct who *w, long ret)
{
	int err = (int)-ret;

	if (ret == 0) {
		struct sock *sk = (struct sock *)c->sk;

		__sync_fetch_and_add(&s->binds_ok, 1);
		/* The kernel picked a port now (not deferred by IP_BIND_ADDRESS_NO_PORT). */
		if ((c->flags & PS_F_PORT0) && BPF_CORE_READ(sk, __sk_common.skc_num))
			__sync_fetch_and_add(&s->port0_binds_ok, 1);
	} else if (bind_traced(err)) {
		__sync_fetch_and_add(&s->binds_failed, 1);
		record_failure(c, w, err);
	} else {
		__sync_fetch_and_add(&s->binds_other, 1);
	}
}

/* Counts a finished connect: ok means a local port was found. */
static __always_inline void finish_connect(struct ps_proc_stats *s, struct call *c, struct who *w, long ret)
{
	int err = (int)-ret;

	if (c->port0_bound)
		__sync_fetch_and_add(&s->port0_bind_connects, 1);
	if (c->chk_failed) {
		__sync_fetch_and_add(&s->connect_tw_blocked, c->tw_blocked);
		__sync_fetch_and_add(&s->connect_est_blocked,
				     c->chk_failed > c->tw_blocked ? c->chk_failed - c->tw_blocked : 0);
	}
	if (ret == 0 || err == EINPROGRESS) {
		__sync_fetch_and_add(&s->connects_ok, 1);
	} else if (connect_traced(err)) {
		__sync_fetch_and_add(&s->connects_failed, 1);
		record_failure(c, w, err);
	} else {
		__sync_fetch_and_add(&s->connects_other, 1);
	}
}

/* Finishes the call op of this task with the kernel's return value. */
static __always_inline int call_finish(__u8 op, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ps_proc_stats *s;
	struct who w;
	struct call *c;

	c = bpf_map_lookup_elem(&calls, &id);
	/* Another call of this task is in flight (get_port runs inside bind):
	 * it is not ours to finish. */
	if (!c || c->op != op)
		return 0;
	who_of(&w, (void *)bpf_get_current_task());
	s = proc_stats_of(id >> 32, w.start_ns);
	if (!s)
		goto out;

	if (op == PS_OP_BIND) {
		finish_bind(s, c, &w, ret);
	} else if (op == PS_OP_LISTEN) {
		/* Only get_port fails listen() with EADDRINUSE; EINVAL and the
		 * like are misuse, not ours. */
		if (ret == 0) {
			__sync_fetch_and_add(&s->listens_ok, 1);
		} else if (ret == -EADDRINUSE) {
			__sync_fetch_and_add(&s->listens_failed, 1);
			record_failure(c, &w, EADDRINUSE);
		}
	} else {
		finish_connect(s, c, &w, ret);
	}
out:
	bpf_map_delete_elem(&calls, &id);
	return 0;
}

#endif
