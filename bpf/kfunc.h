/* Kernel-function backend: inet_bind/inet6_bind, inet_hash_connect/
 * inet6_hash_connect and inet_csk_get_port (listen), plus inet_bind_conflict
 * for who holds a port and __inet{,6}_check_established and tcp_twsk_unique
 * for why a connect found no port. Each hook has an fentry/fexit form and a
 * kprobe/kretprobe twin; Go loads one family and deletes the other. These see
 * calls that never pass a syscall: io_uring bind/connect, in-kernel callers. */
#ifndef PORTSLEUTH_KFUNC_H
#define PORTSLEUTH_KFUNC_H

#include "state.h"

/* bind: the requested address from the kernel's copy of the sockaddr (the sk
 * fields are reset when bind fails). */
static __always_inline int bind_begin(struct socket *sock, const void *uaddr, __u8 source)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u8 sa[28] = {};
	struct call c = {};
	struct sock *sk;

	if (!traced_pid(id))
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (call_init(&c, PS_OP_BIND, source, sk))
		return 0;
	c.sock_ino = socket_ino(sock);
	if (bpf_probe_read_kernel(sa, sizeof(sa), uaddr) &&
	    bpf_probe_read_kernel(sa, 16, uaddr))
		return 0;
	if (parse_sockaddr(sa, c.family, c.laddr, &c.lport))
		return 0;
	call_store(id, &c);
	return 0;
}

/* connect: tcp_v{4,6}_connect has put the destination into the socket and
 * picked a source address; the bound address counts only if bind() set it. */
static __always_inline int connect_begin(struct sock *sk, __u8 source)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call c = {};

	if (!traced_pid(id))
		return 0;
	if (call_init(&c, PS_OP_CONNECT, source, sk))
		return 0;
	c.sock_ino = sk_ino(sk);
	c.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (c.family == AF_INET)
		bpf_core_read(c.daddr, 4, &sk->__sk_common.skc_daddr);
	else
		bpf_core_read(c.daddr, 16, &sk->__sk_common.skc_v6_daddr);
	c.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	sock_bound_laddr(sk, c.family, c.laddr);
	call_store(id, &c);
	return 0;
}

/* Per candidate port of a traced connect: only this task's call entry is touched. */
static __always_inline void candidate(int taken, int tw)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);

	if (!c || c->op != PS_OP_CONNECT)
		return;
	if (taken)
		c->chk_failed++;
	if (tw)
		c->tw_blocked++;
}

/* inet_bind_conflict judges one owner of the port at a time; the bind fails
 * on the last owner it found in conflict (it stops there), so keeping the
 * last one names the holder. */
static __always_inline void conflict_candidate(struct sock *sk2)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);

	if (c && c->op != PS_OP_CONNECT)
		c->cand = (__u64)sk2;
}

static __always_inline void conflict_verdict(int conflict)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);

	if (c && c->op != PS_OP_CONNECT && conflict)
		c->holder = c->cand;
}

/* listen() runs get_port outside any bind call: for an unbound socket, and
 * again for a bound one (where SO_REUSEADDR binds shared a port). Inside a
 * bind, the bind hooks report. */
static __always_inline int listen_begin(struct sock *sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call c = {};

	if (!traced_pid(id) || bpf_map_lookup_elem(&calls, &id))
		return 0;
	if (call_init(&c, PS_OP_LISTEN, PS_SRC_INET_CSK_GET_PORT, sk))
		return 0;
	c.sock_ino = sk_ino(sk);
	sock_local(sk, c.family, c.laddr, &c.lport);
	call_store(id, &c);
	return 0;
}

/* Up to early 6.1 get_port returned 1 on failure, since -EADDRINUSE. */
static __always_inline int listen_finish(int ret)
{
	return call_finish(PS_OP_LISTEN, ret ? -EADDRINUSE : 0);
}

/* fentry/fexit */

SEC("fentry/inet_bind")
int BPF_PROG(fentry_inet_bind, struct socket *sock, struct sockaddr *uaddr)
{
	return bind_begin(sock, uaddr, PS_SRC_INET_BIND);
}

SEC("fexit/inet_bind")
int BPF_PROG(fexit_inet_bind, struct socket *sock, struct sockaddr *uaddr, int addr_len, int ret)
{
	return call_finish(PS_OP_BIND, ret);
}

SEC("fentry/inet6_bind")
int BPF_PROG(fentry_inet6_bind, struct socket *sock, struct sockaddr *uaddr)
{
	return bind_begin(sock, uaddr, PS_SRC_INET6_BIND);
}

SEC("fexit/inet6_bind")
int BPF_PROG(fexit_inet6_bind, struct socket *sock, struct sockaddr *uaddr, int addr_len, int ret)
{
	return call_finish(PS_OP_BIND, ret);
}

SEC("fentry/inet_hash_connect")
int BPF_PROG(fentry_inet_hash_connect, struct inet_timewait_death_row *dr, struct sock *sk)
{
	return connect_begin(sk, PS_SRC_INET_HASH_CONNECT);
}

SEC("fexit/inet_hash_connect")
int BPF_PROG(fexit_inet_hash_connect, struct inet_timewait_death_row *dr, struct sock *sk, int ret)
{
	return call_finish(PS_OP_CONNECT, ret);
}

SEC("fentry/inet6_hash_connect")
int BPF_PROG(fentry_inet6_hash_connect, struct inet_timewait_death_row *dr, struct sock *sk)
{
	return connect_begin(sk, PS_SRC_INET6_HASH_CONNECT);
}

SEC("fexit/inet6_hash_connect")
int BPF_PROG(fexit_inet6_hash_connect, struct inet_timewait_death_row *dr, struct sock *sk, int ret)
{
	return call_finish(PS_OP_CONNECT, ret);
}

/* The return value through bpf_get_func_ret: 6.15 added arguments. */
SEC("fexit/__inet_check_established")
int BPF_PROG(fexit_check_established)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	candidate((int)ret != 0, 0);
	return 0;
}

SEC("fexit/__inet6_check_established")
int BPF_PROG(fexit_check_established6)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	candidate((int)ret != 0, 0);
	return 0;
}

/* 0: a TIME_WAIT socket holds the 4-tuple and may not be reused. */
SEC("fexit/tcp_twsk_unique")
int BPF_PROG(fexit_tcp_twsk_unique, struct sock *sk, struct sock *sktw, void *twp, int ret)
{
	candidate(0, ret == 0);
	return 0;
}

SEC("fexit/inet_bind_conflict")
int BPF_PROG(fexit_inet_bind_conflict, const struct sock *sk, struct sock *sk2)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	conflict_candidate(sk2);
	conflict_verdict((__u8)ret);
	return 0;
}

SEC("fentry/inet_csk_get_port")
int BPF_PROG(fentry_inet_csk_get_port, struct sock *sk)
{
	return listen_begin(sk);
}

SEC("fexit/inet_csk_get_port")
int BPF_PROG(fexit_inet_csk_get_port, struct sock *sk, unsigned short snum, int ret)
{
	return listen_finish(ret);
}

/* kprobe/kretprobe twins */

SEC("kprobe/inet_bind")
int BPF_KPROBE(kprobe_inet_bind, struct socket *sock, struct sockaddr *uaddr)
{
	return bind_begin(sock, uaddr, PS_SRC_INET_BIND);
}

SEC("kretprobe/inet_bind")
int BPF_KRETPROBE(kretprobe_inet_bind, int ret)
{
	return call_finish(PS_OP_BIND, ret);
}

SEC("kprobe/inet6_bind")
int BPF_KPROBE(kprobe_inet6_bind, struct socket *sock, struct sockaddr *uaddr)
{
	return bind_begin(sock, uaddr, PS_SRC_INET6_BIND);
}

SEC("kretprobe/inet6_bind")
int BPF_KRETPROBE(kretprobe_inet6_bind, int ret)
{
	return call_finish(PS_OP_BIND, ret);
}

SEC("kprobe/inet_hash_connect")
int BPF_KPROBE(kprobe_inet_hash_connect, struct inet_timewait_death_row *dr, struct sock *sk)
{
	return connect_begin(sk, PS_SRC_INET_HASH_CONNECT);
}

SEC("kretprobe/inet_hash_connect")
int BPF_KRETPROBE(kretprobe_inet_hash_connect, int ret)
{
	return call_finish(PS_OP_CONNECT, ret);
}

SEC("kprobe/inet6_hash_connect")
int BPF_KPROBE(kprobe_inet6_hash_connect, struct inet_timewait_death_row *dr, struct sock *sk)
{
	return connect_begin(sk, PS_SRC_INET6_HASH_CONNECT);
}

SEC("kretprobe/inet6_hash_connect")
int BPF_KRETPROBE(kretprobe_inet6_hash_connect, int ret)
{
	return call_finish(PS_OP_CONNECT, ret);
}

SEC("kretprobe/__inet_check_established")
int BPF_KRETPROBE(kretprobe_check_established, int ret)
{
	candidate(ret != 0, 0);
	return 0;
}

SEC("kretprobe/__inet6_check_established")
int BPF_KRETPROBE(kretprobe_check_established6, int ret)
{
	candidate(ret != 0, 0);
	return 0;
}

SEC("kretprobe/tcp_twsk_unique")
int BPF_KRETPROBE(kretprobe_tcp_twsk_unique, int ret)
{
	candidate(0, ret == 0);
	return 0;
}

SEC("kprobe/inet_csk_get_port")
int BPF_KPROBE(kprobe_inet_csk_get_port, struct sock *sk)
{
	return listen_begin(sk);
}

SEC("kretprobe/inet_csk_get_port")
int BPF_KRETPROBE(kretprobe_inet_csk_get_port, int ret)
{
	return listen_finish(ret);
}

SEC("kprobe/inet_bind_conflict")
int BPF_KPROBE(kprobe_inet_bind_conflict, const struct sock *sk, struct sock *sk2)
{
	conflict_candidate(sk2);
	return 0;
}

SEC("kretprobe/inet_bind_conflict")
int BPF_KRETPROBE(kretprobe_inet_bind_conflict, bool ret)
{
	conflict_verdict(ret);
	return 0;
}

#endif

