/* cgroup backend: sock_addr hooks on the cgroup v2 root (bind4/6, connect4/6),
 * post_bind4/6 and sock_release, plus tp_btf inet_sock_set_state. They cost
 * only the calls they hook: no syscall slow path for the rest of the host.
 * Every program allows the call (returns 1): portsleuth only watches.
 *
 * None of these hooks sees a return value, so outcomes are inferred:
 * - a bind that reached bind4/6 succeeded if post_bind4/6 ran for its socket.
 *   It failed if the socket is bound again or released first, or when the
 *   kernel's own sweep (a bpf_timer) finds it older than a second. The errno
 *   is then worked out from what the hook saw: EINVAL for a socket already
 *   bound, EACCES for a privileged port without CAP_NET_BIND_SERVICE,
 *   EADDRNOTAVAIL for an address on no interface of the namespace, else
 *   EADDRINUSE;
 * - a TCP connect is followed by its socket's state alone: CLOSE -> SYN_SENT
 *   inside the call starts it, and it failed to find a source port
 *   (EADDRNOTAVAIL) when the socket went SYN_SENT -> CLOSE in the caller's
 *   context, with no socket error and without ever entering the established
 *   hash: that is tcp_v{4,6}_connect's own failure path. Any other way out
 *   of SYN_SENT means a port was found. Its state lives in socket-local
 *   storage, so the success path touches no shared table.
 * Blind spots, said in the backend's notes: listen(), UDP connect()'s autobind
 * (EAGAIN), TCP connects that fail before any port work (no route), and binds
 * another cgroup program refused (EPERM). */
#ifndef PORTSLEUTH_CGROUP_H
#define PORTSLEUTH_CGROUP_H

#include "state.h"

#define IFA_F_OPTIMISTIC 0x04
#define IFA_F_TENTATIVE 0x40
#define CAP_NET_BIND_SERVICE 10
#define CLOCK_MONOTONIC 1

/* A bind whose outcome is not known yet: until post_bind, or a failure. */
struct pending {
	__u64 ts;         /* bpf_ktime_get_coarse_ns() at the hook: ages of a second need no finer clock */
	__u64 id;         /* the caller's pid_tgid */
	__u64 task;       /* its task_struct: read (comm, cgroup) only if the call failed */
	__u64 start_ns;   /* its process's start time: the outcome may be learnt elsewhere */
	/* What the hook saw cheaply (ctx fields, the socket's port); the rest
	 * (state, netns, options, inode) is read only if the call failed. */
	struct call c;
	__u8 bound;       /* the socket already had a port (EINVAL) */
	__u8 privileged;  /* port below ip_unprivileged_port_start, caller without CAP_NET_BIND_SERVICE */
	__u8 _pad[6];
};

/* Keyed by the struct sock's address: one bind at a time holds a socket, so
 * one entry per socket. Binds are the only calls kept here; an entry lives
 * from bind4 to post_bind when the bind succeeds. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pending);
} pending_calls SEC(".maps");

/* How many entries pending_calls holds: a socket's release looks there only
 * when some bind is pending anywhere (a global variable costs no helper). */
__u64 pending_binds = 0;

/* A TCP connect from CLOSE -> SYN_SENT (inside connect(), the caller's
 * context) to the socket's next state, keyed by the struct sock's address.
 * Socket-local storage would go with the socket, but creating it costs
 * more than an insert and a delete in a preallocated table (measured). */
struct conn {
	__u64 id;         /* the caller's pid_tgid */
	__u64 start_ns;   /* its process's start time */
	__u64 port0;      /* the socket's port came from a port-0 bind */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

/* The kernel's sweep of binds that never learnt their outcome: armed by the
 * first pending bind, it fires every PS_SWEEP_EVERY_NS while any bind is
 * pending and decides those older than PS_SWEEP_AGE_NS. */
enum ps_sweep_ns {
	PS_SWEEP_EVERY_NS = 250000000, /* Go waits on the same figures (bpf2go) */
	PS_SWEEP_AGE_NS = 1000000000,
};

struct sweep_timer {
	struct bpf_timer t;
	__u64 armed;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sweep_timer);
} sweep_timers SEC(".maps");

/* Index 0: calls not tracked because a pending table was full (their outcome
 * is not counted: Go reports the number). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

/* The kernel address of a socket the verifier types as a context or socket
 * pointer: those allow no arithmetic, so CO-RE reads need a plain number. */
static __always_inline struct sock *sock_addr_of(const void *p)
{
	__u64 raw = 0;

	bpf_probe_read_kernel(&raw, sizeof(raw), &p);
	return (struct sock *)raw;
}

/* Whether the current task holds CAP_NET_BIND_SERVICE: bit 10 sits in the
 * first 32 bits of kernel_cap_t, as u32[2] (before 6.3) or u64. */
static __always_inline int may_bind_service(struct task_struct *task)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);
	__u32 lo = 0;

	bpf_core_read(&lo, sizeof(lo), &cred->cap_effective);
	return lo & (1U << CAP_NET_BIND_SERVICE);
}

/* State of one walk over a namespace's interfaces (bpf_loop callback). */
struct addr_walk {
	__u64 head;      /* &net->dev_base_head */
	__u64 pos;       /* the current list node */
	__u64 a6[2];     /* IPv6 address sought */
	__u32 a4;        /* IPv4 address sought, network order */
	__u8 v6;
	__u8 found;
	__u8 done;       /* the whole list was walked */
	__u8 _pad;
};

/* One interface per call. IPv4 follows inet_addr_type: an address of an
 * interface that is up, any address of a loopback interface's prefix (lo's
 * 127.0.0.0/8), its broadcast. IPv6 follows ipv6_chk_addr_and_flags: an
 * assigned address that is not tentative (unless optimistic). Run through
 * bpf_loop so the verifier checks the body once, not once per iteration. */
static long addr_walk_dev(__u32 i, struct addr_walk *w)
{
	struct list_head *pos = (struct list_head *)w->pos;
	struct net_device *dev;

	if (w->pos == w->head) {
		w->done = 1;
		return 1;
	}
	dev = (void *)pos - bpf_core_field_offset(struct net_device, dev_list);
	w->pos = (__u64)BPF_CORE_READ(pos, next);
	if (!w->v6) {
		unsigned int flags = BPF_CORE_READ(dev, flags);
		struct in_ifaddr *ifa;

		if (!(flags & IFF_UP))
			return 0;
		ifa = BPF_CORE_READ(dev, ip_ptr, ifa_list);
		for (int j = 0; j < 8 && ifa; j++) {
			__u32 local = BPF_CORE_READ(ifa, ifa_local), mask = BPF_CORE_READ(ifa, ifa_mask);

			if (local == w->a4 || BPF_CORE_READ(ifa, ifa_broadcast) == w->a4 ||
			    ((flags & IFF_LOOPBACK) && (local & mask) == (w->a4 & mask))) {
				w->found = 1;
				return 1;
			}
			ifa = BPF_CORE_READ(ifa, ifa_next);
		}
		return 0;
	}
	struct inet6_dev *idev = BPF_CORE_READ(dev, ip6_ptr);
	struct list_head *ahead, *apos;

	if (!idev)
		return 0;
	ahead = &idev->addr_list;
	apos = BPF_CORE_READ(idev, addr_list.next);
	for (int j = 0; j < 8 && apos != ahead; j++) {
		struct inet6_ifaddr *ifa = (void *)apos - bpf_core_field_offset(struct inet6_ifaddr, if_list);
		__u64 got[2] = {};
		__u32 f = BPF_CORE_READ(ifa, flags);

		bpf_core_read(got, sizeof(got), &ifa->addr);
		if (got[0] == w->a6[0] && got[1] == w->a6[1] &&
		    (!(f & IFA_F_TENTATIVE) || (f & IFA_F_OPTIMISTIC))) {
			w->found = 1;
			return 1;
		}
		apos = BPF_CORE_READ(apos, next);
	}
	return 0;
}

/* Whether an address is local in net: IPv4 (network order) in a4, or IPv6 in
 * a6. A namespace with more interfaces than are walked counts as local: no
 * false EADDRNOTAVAIL. Global, so verified once per program. */
__attribute__((noinline)) int addr_local(__u64 netp, __u32 a4, __u64 a6_hi, __u64 a6_lo, int v6)
{
	struct net *net = (struct net *)netp; /* a number: global functions take no kernel pointers */
	struct addr_walk w = {};
	__u8 first;

	if (!net)
		return 1;
	if (!v6) {
		w.a4 = a4;
		first = a4 & 0xff;
		if (a4 == 0xffffffff || (first & 0xf0) == 0xe0)
			return 1; /* broadcast, multicast */
	} else {
		if ((a6_hi & 0xff) == 0xff)
			return 1; /* multicast (ff00::/8): no address check */
		w.v6 = 1;
		w.a6[0] = a6_hi;
		w.a6[1] = a6_lo;
	}
	w.head = (__u64)&net->dev_base_head;
	w.pos = (__u64)BPF_CORE_READ(net, dev_base_head.next);
	bpf_loop(64, addr_walk_dev, &w, 0);
	return w.found || !w.done;
}

/* The errno a bind that never reached post_bind most likely returned. */
static __always_inline int bind_errno(struct pending *p)
{
	struct sock *sk = (struct sock *)p->c.sk;
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	const __u8 *a = p->c.laddr;
	__u16 nonlocal;
	__u64 nonlocal4;

	if (p->bound)
		return 22; /* EINVAL */
	if (p->privileged)
		return EACCES;
	if (is_zero16(a))
		return EADDRINUSE;
	nonlocal = p->c.options & (PS_OPT_FREEBIND | PS_OPT_TRANSPARENT);
	/* Sysctl widths differ between releases: read them by their real size. */
	nonlocal4 = BPF_CORE_READ_BITFIELD_PROBED(net, ipv4.sysctl_ip_nonlocal_bind);
	if (p->c.family == AF_INET) {
		if (!nonlocal && !nonlocal4 && !addr_local((__u64)net, *(const __u32 *)a, 0, 0, 0))
			return EADDRNOTAVAIL;
		return EADDRINUSE;
	}
	/* IPv4-mapped: checked as IPv4 by __inet6_bind. */
	if (((const __u64 *)a)[0] == 0 && ((const __u32 *)a)[2] == bpf_htonl(0xffff)) {
		if (!nonlocal && !nonlocal4 && !addr_local((__u64)net, ((const __u32 *)a)[3], 0, 0, 0))
			return EADDRNOTAVAIL;
		return EADDRINUSE;
	}
	if (!nonlocal && !BPF_CORE_READ_BITFIELD_PROBED(net, ipv6.sysctl.ip_nonlocal_bind) &&
	    !addr_local((__u64)net, 0, ((const __u64 *)a)[0], ((const __u64 *)a)[1], 1))
		return EADDRNOTAVAIL;
	return EADDRINUSE;
}

/* Reads what a failed bind's report needs and the hook skipped: only
 * failures pay for it. The socket is still alive: a pending bind is decided
 * before its socket's release completes. */
static __always_inline void pending_fill(struct pending *p, struct who *w)
{
	struct sock *sk = (struct sock *)p->c.sk;

	p->c.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	p->c.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	p->c.options = sock_options(sk);
	p->c.sock_ino = sk_ino(sk);
	who_of(w, (struct task_struct *)p->task);
	w->id = p->id;
	w->start_ns = p->start_ns;
}

/* Counts a bind that succeeded. */
static __always_inline void bind_ok(__u64 id, __u64 start_ns, __u16 flags)
{
	struct ps_proc_stats *s = proc_stats_of(id >> 32, start_ns);

	if (!s)
		return;
	__sync_fetch_and_add(&s->binds_ok, 1);
	if (flags & PS_F_PORT0)
		__sync_fetch_and_add(&s->port0_binds_ok, 1);
}

/* A bind that moved on without post_bind failed. p is a copy the caller owns. */
static __always_inline void bind_failed(struct pending *p)
{
	struct ps_proc_stats *s = proc_stats_of(p->id >> 32, p->start_ns);
	struct who w = {};

	pending_fill(p, &w);
	if (s)
		finish_bind(s, &p->c, &w, -bind_errno(p));
}

/* Decides the pending bind of socket key, found at p, as failed: the socket
 * moved on without post_bind. Whoever deletes the entry decides it (the
 * hooks and the sweep race). buf is the caller's stack (a per-CPU buffer
 * could be reused by a program that preempts or interrupts this one). */
static __always_inline int settle(__u64 key, struct pending *p, struct pending *buf)
{
	__builtin_memcpy(buf, p, sizeof(*buf));
	if (bpf_map_delete_elem(&pending_calls, &key))
		return 0;
	__sync_fetch_and_add(&pending_binds, -1);
	bind_failed(buf);
	return 1;
}

static __always_inline void ctx_addr(struct bpf_sock_addr *ctx, __u8 family, __u8 *addr)
{
	if (family == AF_INET) {
		__u32 a = ctx->user_ip4;

		__builtin_memcpy(addr, &a, 4);
	} else {
		__u32 a[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

		__builtin_memcpy(addr, a, 16);
	}
}

static long sweep_one(struct bpf_map *map, __u64 *key, struct pending *p, __u64 *now);

/* The sweep: decides every bind pending longer than PS_SWEEP_AGE_NS, then
 * fires again while binds are pending. The object is built for BPF v1
 * (atomic add only): disarming is an atomic add, a full barrier, before the
 * count is read; sweep_arm adds to the count before it reads armed. One of
 * the two sees the other's write, so a bind pended meanwhile is never left
 * without a sweep (both may arm: starting an armed timer again is harmless). */
static int sweep_fire(void *map, __u32 *key, struct sweep_timer *st)
{
	__u64 now = bpf_ktime_get_coarse_ns();

	bpf_for_each_map_elem(&pending_calls, sweep_one, &now, 0);
	__sync_fetch_and_add(&st->armed, -1);
	if (pending_binds) {
		st->armed = 1;
		bpf_timer_start(&st->t, PS_SWEEP_EVERY_NS, 0);
	}
	return 0;
}

static long sweep_one(struct bpf_map *map, __u64 *key, struct pending *p, __u64 *now)
{
	struct pending buf;

	if (*now - p->ts >= PS_SWEEP_AGE_NS)
		settle(*key, p, &buf);
	return 0;
}

/* Arms the sweep unless it is armed: called after a bind was pended (and
 * counted in pending_binds). */
static __always_inline void sweep_arm(void)
{
	__u32 zero = 0;
	struct sweep_timer *st = bpf_map_lookup_elem(&sweep_timers, &zero);

	if (!st || st->armed)
		return;
	st->armed = 1;
	bpf_timer_init(&st->t, &sweep_timers, CLOCK_MONOTONIC); /* -EBUSY once done: fine */
	bpf_timer_set_callback(&st->t, sweep_fire);
	bpf_timer_start(&st->t, PS_SWEEP_EVERY_NS, 0);
}

static __always_inline int cg_bind(struct bpf_sock_addr *ctx, __u8 family)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending buf, *p = &buf, *old;
	__u32 proto = ctx->protocol;
	struct task_struct *task;
	struct sock *sk;
	__u64 key;

	if (!traced_pid(id) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return 1;
	sk = sock_addr_of(ctx->sk);
	key = (__u64)sk;
	/* A bind still pending on this socket failed: it is binding again. */
	if (pending_binds && (old = bpf_map_lookup_elem(&pending_calls, &key)))
		settle(key, old, p);
	__builtin_memset(p, 0, sizeof(*p));
	task = (void *)bpf_get_current_task();
	p->ts = bpf_ktime_get_coarse_ns();
	p->id = id;
	p->task = (__u64)task;
	p->start_ns = BPF_CORE_READ(task, group_leader, start_time);
	p->c.sk = key;
	p->c.op = PS_OP_BIND;
	p->c.source = PS_SRC_CGROUP_BIND;
	p->c.family = family;
	p->c.proto = proto;
	p->c.lport = bpf_ntohs((__u16)ctx->user_port);
	ctx_addr(ctx, family, p->c.laddr);
	if (p->c.lport == 0)
		p->c.flags |= PS_F_PORT0;
	if (is_zero16(p->c.laddr))
		p->c.flags |= PS_F_ANYADDR;
	p->bound = BPF_CORE_READ(sk, __sk_common.skc_num) != 0;
	if (p->c.lport) {
		struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);

		p->privileged = p->c.lport < BPF_CORE_READ_BITFIELD_PROBED(net, ipv4.sysctl_ip_prot_sock) &&
				!may_bind_service(task);
	} else if (!p->bound && (inet_options(sk) & PS_OPT_BIND_ADDRESS_NO_PORT)) {
		/* IP_BIND_ADDRESS_NO_PORT with port 0 skips get_port and
		 * post_bind: only the address checks can fail it, now. */
		if (p->c.flags & PS_F_ANYADDR) {
			bind_ok(id, p->start_ns, 0);
			return 1;
		}
		struct who w = {};
		struct ps_proc_stats *s;
		int err;

		pending_fill(p, &w);
		err = bind_errno(p);
		/* EADDRINUSE here means "no address problem": get_port never runs. */
		if (err == EADDRINUSE) {
			bind_ok(id, p->start_ns, 0);
		} else if ((s = proc_stats_of(id >> 32, p->start_ns))) {
			finish_bind(s, &p->c, &w, -err);
		}
		return 1;
	}
	if (bpf_map_update_elem(&pending_calls, &key, p, BPF_NOEXIST)) {
		percpu_inc(&untracked);
		return 1;
	}
	__sync_fetch_and_add(&pending_binds, 1);
	sweep_arm();
	return 1;
}

/* post_bind runs once get_port gave the socket its port: the bind succeeded
 * (the hooks allow everything, so nothing can undo it after). */
static __always_inline int cg_post_bind(struct bpf_sock *ctx)
{
	__u64 key = (__u64)ctx; /* only a key here: no read needs it as a number */
	struct pending *p = bpf_map_lookup_elem(&pending_calls, &key);
	__u64 id, start_ns;
	__u16 flags;

	if (!p)
		return 1;
	id = p->id;
	start_ns = p->start_ns;
	flags = p->c.flags;
	if (bpf_map_delete_elem(&pending_calls, &key))
		return 1; /* the sweep decided it */
	__sync_fetch_and_add(&pending_binds, -1);
	bind_ok(id, start_ns, flags);
	return 1;
}

/* TCP connects are followed through their socket's state (cg_sock_state).
 * A UDP connect only sets the destination: its autobind failures (EAGAIN)
 * stay unseen, the rest succeeds. */
static __always_inline int cg_connect(struct bpf_sock_addr *ctx)
{
	__u64 id;
	struct ps_proc_stats *s;

	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	id = bpf_get_current_pid_tgid();
	if (!traced_pid(id))
		return 1;
	struct task_struct *task = (void *)bpf_get_current_task();

	s = proc_stats_of(id >> 32, BPF_CORE_READ(task, group_leader, start_time));
	if (s)
		__sync_fetch_and_add(&s->connects_ok, 1);
	return 1;
}

SEC("cgroup/bind4")
int cg_bind4(struct bpf_sock_addr *ctx)
{
	return cg_bind(ctx, AF_INET);
}

SEC("cgroup/bind6")
int cg_bind6(struct bpf_sock_addr *ctx)
{
	return cg_bind(ctx, AF_INET6);
}

SEC("cgroup/post_bind4")
int cg_post_bind4(struct bpf_sock *ctx)
{
	return cg_post_bind(ctx);
}

SEC("cgroup/post_bind6")
int cg_post_bind6(struct bpf_sock *ctx)
{
	return cg_post_bind(ctx);
}

SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx)
{
	return cg_connect(ctx);
}

SEC("cgroup/connect6")
int cg_connect6(struct bpf_sock_addr *ctx)
{
	return cg_connect(ctx);
}

/* The socket's last reference is going (close, exit): a bind still pending
 * on it failed. */
SEC("cgroup/sock_release")
int cg_sock_release(struct bpf_sock *ctx)
{
	__u64 key = (__u64)ctx;
	struct pending *p, buf;

	if (!pending_binds)
		return 1;
	p = bpf_map_lookup_elem(&pending_calls, &key);
	if (p)
		settle(key, p, &buf);
	return 1;
}

/* CLOSE -> SYN_SENT inside connect(): remembers who connects, and whether a
 * port-0 bind gave the socket its port (bound, with no port asked for).
 * sk and the current task are BTF pointers here: plain loads, no helper. */
static __always_inline void conn_begin(struct sock *sk)
{
	__u64 id = bpf_get_current_pid_tgid(), key = (__u64)sk;
	struct task_struct *task;
	struct conn c;

	if (!traced_pid(id))
		return;
	task = bpf_get_current_task_btf();
	c.id = id;
	c.start_ns = task->group_leader->start_time;
	c.port0 = port0_bound(sk);
	if (bpf_map_update_elem(&conns, &key, &c, BPF_ANY))
		percpu_inc(&untracked);
}

/* tcp_v{4,6}_connect's failure path: SYN_SENT -> CLOSE in the caller's
 * context, no socket error, and the socket never entered the established
 * hash (it would be hashed once a port was found; the tracepoint comes
 * before the unhash). */
static __always_inline int conn_no_port(struct sock *sk, struct conn *c, int newstate)
{
	return newstate == TCP_CLOSE && bpf_get_current_pid_tgid() == c->id && sk->sk_err == 0 &&
	       !sk->__sk_common.skc_nulls_node.pprev;
}

/* The failure's call as the other backends see it, read from the socket:
 * the destination is still set, the bound address only if bind() set it. */
static __always_inline void conn_failed(struct sock *sk, struct conn *c, struct ps_proc_stats *s)
{
	struct call call = {};
	struct who w = {};

	call.op = PS_OP_CONNECT;
	call.source = PS_SRC_CGROUP_CONNECT;
	call.proto = IPPROTO_TCP;
	call.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	call.state = TCP_CLOSE;
	call.sk = (__u64)sk;
	call.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	call.options = sock_options(sk);
	call.sock_ino = sk_ino(sk);
	call.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	call.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (call.family == AF_INET)
		bpf_core_read(call.daddr, 4, &sk->__sk_common.skc_daddr);
	else
		bpf_core_read(call.daddr, 16, &sk->__sk_common.skc_v6_daddr);
	sock_bound_laddr(sk, call.family, call.laddr);
	if (call.lport == 0)
		call.flags |= PS_F_PORT0;
	if (is_zero16(call.laddr))
		call.flags |= PS_F_ANYADDR;
	who_of(&w, (struct task_struct *)bpf_get_current_task());
	w.id = c->id;
	w.start_ns = c->start_ns;
	__sync_fetch_and_add(&s->connects_failed, 1);
	record_failure(&call, &w, EADDRNOTAVAIL);
}

/* The first state after SYN_SENT decides the connect: whoever deletes the
 * entry counts it. */
static __always_inline void conn_end(struct sock *sk, int newstate)
{
	__u64 key = (__u64)sk;
	struct conn *p = bpf_map_lookup_elem(&conns, &key), c;
	struct ps_proc_stats *s;

	if (!p)
		return;
	c = *p;
	if (bpf_map_delete_elem(&conns, &key))
		return;
	s = proc_stats_of(c.id >> 32, c.start_ns);
	if (!s)
		return;
	if (c.port0)
		__sync_fetch_and_add(&s->port0_bind_connects, 1);
	if (conn_no_port(sk, &c, newstate))
		conn_failed(sk, &c, s);
	else
		__sync_fetch_and_add(&s->connects_ok, 1);
}

/* TCP state changes, host-wide. Three compares for every transition that
 * neither starts nor ends a connect nor closes a connection first. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(cg_sock_state, struct sock *sk, int oldstate, int newstate)
{
	if (oldstate == TCP_ESTABLISHED) {
		if (newstate == TCP_FIN_WAIT1)
			record_closer(sk);
	} else if (oldstate == TCP_CLOSE) {
		if (newstate == TCP_SYN_SENT)
			conn_begin(sk);
	} else if (oldstate == TCP_SYN_SENT) {
		conn_end(sk, newstate);
	}
	return 0;
}

/* Run by Go (BPF_PROG_TEST_RUN, never attached) for each pending bind once
 * the traced calls are known to have returned: args[0] is the socket key,
 * args[1] the latest start (coarse monotonic ns) of a bind to age. It only
 * makes the bind old enough for the kernel's next sweep, which decides it
 * with the same accounting as everywhere else: the failure path is verified
 * in the hooks and the sweep, not a third time here (load time). Go reads the
 * clock: tracing programs may not read the coarse one. */
SEC("raw_tp")
int ps_sweep(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 key = ctx->args[0];
	struct pending *p = bpf_map_lookup_elem(&pending_calls, &key);

	if (!p || p->ts > ctx->args[1])
		return 0;
	p->ts = 0;
	return 1;
}

#endif
