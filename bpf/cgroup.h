/* cgroup backend: sock_addr hooks on the cgroup v2 root (bind4/6, connect4/6),
 * post_bind4/6 and sock_release, plus tp_btf inet_sock_set_state. They cost
 * only the calls they hook: no syscall slow path for the rest of the host.
 * Every program allows the call (returns 1): portsleuth only watches.
 *
 * None of these hooks sees a return value, so outcomes are inferred:
 * - a bind that reached bind4/6 succeeded if post_bind4/6 ran for its socket.
 *   It failed if the socket is bound again, connected or released first, or
 *   when the sweeper (Go, through a test run of ps_sweep) finds it older than
 *   a second. The errno is then worked out from what the hook saw: EINVAL for
 *   a socket already bound, EACCES for a privileged port without
 *   CAP_NET_BIND_SERVICE, EADDRNOTAVAIL for an address on no interface of the
 *   namespace, else EADDRINUSE;
 * - a TCP connect failed to find a source port (EADDRNOTAVAIL) when its socket
 *   went SYN_SENT -> CLOSE inside the call, in the caller's context, with no
 *   socket error set: that is tcp_v{4,6}_connect's own failure path. Any other
 *   way out of SYN_SENT means a port was found.
 * Blind spots, said in the backend's notes: listen(), UDP connect()'s autobind
 * (EAGAIN), and binds another cgroup program refused (EPERM). */
#ifndef PORTSLEUTH_CGROUP_H
#define PORTSLEUTH_CGROUP_H

#include "state.h"

#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define IFF_UP 1
#define IFF_LOOPBACK 8
#define IFA_F_OPTIMISTIC 0x04
#define IFA_F_TENTATIVE 0x40
#define CAP_NET_BIND_SERVICE 10

/* pending.kind */
#define PENDING_BIND 1    /* a bind, until post_bind or a failure */
#define PENDING_CONNECT 2 /* a TCP connect, until its socket leaves SYN_SENT */
#define PORT0_BOUND 3     /* not a call: a TCP socket a port-0 bind gave a port */

/* A bind or connect whose outcome is not known yet, or a port-0 mark. */
struct pending {
	__u64 ts;         /* bpf_ktime_get_ns() at the hook */
	__u64 id;         /* the caller's pid_tgid */
	__u64 task;       /* its task_struct: read (comm, cgroup) only if the call failed */
	__u64 start_ns;   /* its process's start time: the outcome may be learnt elsewhere */
	/* What the hook saw cheaply (ctx fields, the socket's port); the rest
	 * (state, netns, options, inode) is read only if the call failed. */
	struct call c;
	__u8 kind;        /* PENDING_BIND, PENDING_CONNECT, PORT0_BOUND */
	__u8 bound;       /* bind: the socket already had a port (EINVAL) */
	__u8 privileged;  /* bind: port below ip_unprivileged_port_start, caller without CAP_NET_BIND_SERVICE */
	__u8 syn_sent;    /* connect: the socket went CLOSE -> SYN_SENT in the call */
	__u8 port0;       /* connect: on a socket a port-0 bind had bound */
	__u8 _pad[3];
};

/* Keyed by the struct sock's address: one call at a time holds a socket, so
 * one entry per socket. A socket's release removes its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pending);
} pending_calls SEC(".maps");

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

/* Reads what a failure's report needs and the hooks skipped: only failures
 * pay for it. The socket is still alive: a pending call is decided before
 * its socket's release completes. */
static __always_inline void pending_fill(struct pending *p, struct who *w)
{
	struct sock *sk = (struct sock *)p->c.sk;

	p->c.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	p->c.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	p->c.options = sock_options(sk);
	if (!p->c.sock_ino)
		p->c.sock_ino = socket_ino(BPF_CORE_READ(sk, sk_socket));
	if (p->c.op == PS_OP_CONNECT && p->c.lport) {
		sock_bound_laddr(sk, p->c.family, p->c.laddr);
		if (!is_zero16(p->c.laddr))
			p->c.flags &= ~PS_F_ANYADDR;
	}
	who_of(w, (struct task_struct *)p->task);
	w->id = p->id;
	w->start_ns = p->start_ns;
}

/* Counts a bind that succeeded (post_bind marks a TCP socket that a port-0
 * bind gave a port, for the connect that may follow). */
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

/* Counts a connect whose socket left SYN_SENT without the failure path (or
 * never reached it: an "other" error such as no route). */
static __always_inline void connect_ok(__u64 id, __u64 start_ns, __u8 syn_sent, __u8 port0)
{
	struct ps_proc_stats *s = proc_stats_of(id >> 32, start_ns);

	if (!s)
		return;
	if (port0)
		__sync_fetch_and_add(&s->port0_bind_connects, 1);
	if (syn_sent)
		__sync_fetch_and_add(&s->connects_ok, 1);
	else
		__sync_fetch_and_add(&s->connects_other, 1);
}

/* A connect that found no port. p is a copy the caller owns. */
static __always_inline void connect_failed(struct pending *p)
{
	struct ps_proc_stats *s = proc_stats_of(p->id >> 32, p->start_ns);
	struct who w = {};

	if (!s)
		return;
	if (p->port0)
		__sync_fetch_and_add(&s->port0_bind_connects, 1);
	pending_fill(p, &w);
	__sync_fetch_and_add(&s->connects_failed, 1);
	record_failure(&p->c, &w, EADDRNOTAVAIL);
}

/* Decides the entry of socket key, found at p, as if the socket moved on:
 * a pending bind failed, a pending connect found its port (or never tried),
 * a mark is dropped. Whoever deletes the entry decides it: the hooks and the
 * sweeper race. buf is the caller's stack (a per-CPU buffer could be reused
 * by a program that preempts or interrupts this one). */
static __always_inline void settle(__u64 key, struct pending *p, struct pending *buf)
{
	__u8 kind = p->kind, syn_sent = p->syn_sent, port0 = p->port0;
	__u64 id = p->id, start_ns = p->start_ns;

	if (kind == PENDING_BIND)
		__builtin_memcpy(buf, p, sizeof(*buf));
	if (bpf_map_delete_elem(&pending_calls, &key))
		return;
	if (kind == PENDING_BIND)
		bind_failed(buf);
	else if (kind == PENDING_CONNECT)
		connect_ok(id, start_ns, syn_sent, port0);
}

/* Starts a pending call with only what costs nothing: the context's fields. */
static __always_inline void pending_begin(struct pending *p, __u64 id, struct sock *sk, __u8 op, __u8 source,
					  __u8 family, __u32 proto)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->ts = bpf_ktime_get_ns();
	p->id = id;
	struct task_struct *task = (void *)bpf_get_current_task();

	p->task = (__u64)task;
	p->start_ns = BPF_CORE_READ(task, group_leader, start_time);
	p->c.sk = (__u64)sk;
	p->c.op = op;
	p->c.source = source;
	p->c.family = family;
	p->c.proto = proto;
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

/* IP_BIND_ADDRESS_NO_PORT alone, for a port-0 bind. */
static __always_inline int sock_no_port(struct sock *sk)
{
	struct inet_sock *inet = (void *)sk;
	struct inet_sock___old *old = (void *)sk;

	if (bpf_core_field_exists(inet->inet_flags))
		return (BPF_CORE_READ(inet, inet_flags) >> inet_flags_bind_no_port_bit) & 1;
	return BPF_CORE_READ_BITFIELD_PROBED(old, bind_address_no_port);
}

/* Settles whatever socket key had pending (the socket moved on) and says
 * whether it carried a port-0 mark, which the caller may take over. */
static __always_inline int settle_key(__u64 key, struct pending *buf)
{
	struct pending *p = bpf_map_lookup_elem(&pending_calls, &key);

	if (!p)
		return 0;
	if (p->kind == PORT0_BOUND)
		return 1;
	settle(key, p, buf);
	return 0;
}

static __always_inline int cg_bind(struct bpf_sock_addr *ctx, __u8 family)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending buf, *p = &buf;
	__u32 proto = ctx->protocol;
	struct sock *sk;
	__u64 key;

	if (!traced_pid(id) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return 1;
	sk = sock_addr_of(ctx->sk);
	key = (__u64)sk;
	/* A mark means the socket is bound: this bind fails EINVAL below. */
	settle_key(key, p);
	pending_begin(p, id, sk, PS_OP_BIND, PS_SRC_CGROUP_BIND, family, proto);
	p->kind = PENDING_BIND;
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
				!may_bind_service((void *)p->task);
	} else if (!p->bound && sock_no_port(sk)) {
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
	if (bpf_map_update_elem(&pending_calls, &key, p, BPF_ANY))
		percpu_inc(&untracked);
	return 1;
}

/* post_bind runs once get_port gave the socket its port: the bind succeeded
 * (the hooks allow everything, so nothing can undo it after). A TCP socket
 * bound to port 0 keeps its entry, turned into a mark, for the connect that
 * may follow; the rest is dropped. */
static __always_inline int cg_post_bind(struct bpf_sock *ctx)
{
	__u64 key = (__u64)ctx; /* only a key here: no read needs it as a number */
	struct pending *p = bpf_map_lookup_elem(&pending_calls, &key);
	__u64 id, start_ns;
	__u16 flags;

	if (!p || p->kind != PENDING_BIND)
		return 1;
	id = p->id;
	start_ns = p->start_ns;
	flags = p->c.flags;
	if ((flags & PS_F_PORT0) && p->c.proto == IPPROTO_TCP) {
		/* The socket's lock is held: no hook of it runs now. */
		p->kind = PORT0_BOUND;
	} else if (bpf_map_delete_elem(&pending_calls, &key)) {
		return 1; /* the sweeper decided it */
	}
	bind_ok(id, start_ns, flags);
	return 1;
}

static __always_inline int cg_connect(struct bpf_sock_addr *ctx, __u8 family)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending buf, *p = &buf;
	__u32 proto = ctx->protocol;
	struct sock *sk;
	__u64 key;
	int port0;

	if (!traced_pid(id) || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return 1;
	sk = sock_addr_of(ctx->sk);
	key = (__u64)sk;
	port0 = settle_key(key, p);
	pending_begin(p, id, sk, PS_OP_CONNECT, PS_SRC_CGROUP_CONNECT, family, proto);
	p->kind = PENDING_CONNECT;
	p->port0 = port0;
	p->c.dport = bpf_ntohs((__u16)ctx->user_port);
	ctx_addr(ctx, family, p->c.daddr);
	p->c.flags = PS_F_ANYADDR; /* until a failure reads the bound address */
	if (!port0) {
		p->c.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		if (p->c.lport == 0)
			p->c.flags |= PS_F_PORT0;
	} else {
		p->c.lport = 1; /* bound; the real port is read if the call fails */
	}
	/* UDP: no state change tells the outcome; autobind failures (EAGAIN)
	 * stay unseen, the rest succeeds. */
	if (proto != IPPROTO_TCP) {
		connect_ok(id, p->start_ns, 1, 0);
		return 1;
	}
	/* Replaces a port-0 mark in place. */
	if (bpf_map_update_elem(&pending_calls, &key, p, BPF_ANY))
		percpu_inc(&untracked);
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
	return cg_connect(ctx, AF_INET);
}

SEC("cgroup/connect6")
int cg_connect6(struct bpf_sock_addr *ctx)
{
	return cg_connect(ctx, AF_INET6);
}

/* The socket's last reference is going (close, exit): a bind still pending
 * on it failed; a connect still pending found its port (or never tried). */
SEC("cgroup/sock_release")
int cg_sock_release(struct bpf_sock *ctx)
{
	__u64 key = (__u64)ctx;
	struct pending *p = bpf_map_lookup_elem(&pending_calls, &key), buf;

	if (p)
		settle(key, p, &buf);
	return 1;
}

/* TCP state changes, host-wide; only a socket with a pending connect (or a
 * port-0 mark, when it starts listening) costs more than three compares. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(cg_sock_state, struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk, id, start_ns;
	struct pending *p, buf;
	__u8 syn_sent, port0;

	if (newstate == TCP_FIN_WAIT1 && oldstate == TCP_ESTABLISHED) {
		record_closer(sk);
		return 0;
	}
	if (newstate != TCP_LISTEN && oldstate != TCP_SYN_SENT && newstate != TCP_SYN_SENT)
		return 0;
	p = bpf_map_lookup_elem(&pending_calls, &key);
	if (!p)
		return 0;
	if (newstate == TCP_LISTEN) {
		/* A port-0 bind that listens: no connect will follow. */
		if (p->kind == PORT0_BOUND)
			bpf_map_delete_elem(&pending_calls, &key);
		return 0;
	}
	if (p->kind != PENDING_CONNECT)
		return 0;
	id = bpf_get_current_pid_tgid();
	if (newstate == TCP_SYN_SENT) {
		if (oldstate == TCP_CLOSE && id == p->id)
			p->syn_sent = 1;
		return 0;
	}
	/* tcp_v{4,6}_connect's failure path: no port (sport still 0), or the
	 * bound port's 4-tuple is taken; no socket error, the caller's context. */
	if (newstate == TCP_CLOSE && p->syn_sent && id == p->id && BPF_CORE_READ(sk, sk_err) == 0 &&
	    (p->c.lport || BPF_CORE_READ(sk, __sk_common.skc_num) == 0)) {
		__builtin_memcpy(&buf, p, sizeof(buf));
		if (bpf_map_delete_elem(&pending_calls, &key) == 0) {
			if (buf.port0)
				buf.c.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
			connect_failed(&buf);
		}
		return 0;
	}
	/* A port was found: the connection is under way, refused, or done. */
	id = p->id;
	start_ns = p->start_ns;
	syn_sent = p->syn_sent;
	port0 = p->port0;
	if (bpf_map_delete_elem(&pending_calls, &key) == 0)
		connect_ok(id, start_ns, syn_sent, port0);
	return 0;
}

/* Run by Go (BPF_PROG_TEST_RUN, never attached) for each pending call it
 * found old enough: args[0] is the socket key, args[1] the minimum age in ns,
 * checked again here against the kernel's clock (a second normally; 0 once
 * the traced calls are known to have returned). Marks are not calls: they
 * stay until their socket's release. */
SEC("raw_tp")
int ps_sweep(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 key = ctx->args[0];
	struct pending *p = bpf_map_lookup_elem(&pending_calls, &key), buf;

	if (!p || p->kind == PORT0_BOUND || bpf_ktime_get_ns() - p->ts < ctx->args[1])
		return 0;
	settle(key, p, &buf);
	return 1;
}

#endif
