// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Port pressure: BPF iterators over the TCP and UDP socket tables of the
 * network namespace that opens them. Each socket becomes one fixed-size
 * record streamed to Go, which aggregates as it reads: memory stays bounded
 * however many sockets there are. The iterators see what the port allocator
 * sees: listeners, connected and TIME_WAIT sockets, and whether a port's
 * bind bucket belongs to a bind()/listen() owner. Sockets that are bound but
 * neither listening nor connected are in no table they walk. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "sock.h"
#include "closer.h"


static __always_inline void fill_common(struct ps_sock *r, struct sock_common *skc)
{
	r->family = BPF_CORE_READ(skc, skc_family);
	r->state = BPF_CORE_READ(skc, skc_state);
	skc_endpoints(skc, r->family, r->laddr, r->raddr, &r->lport, &r->rport);
	r->options = skc_reuse_options(skc);
}

static __always_inline __u8 bucket_owned(struct inet_bind_bucket *tb)
{
	if (!tb)
		return 0;
	return BPF_CORE_READ(tb, fastreuse) >= 0 || BPF_CORE_READ(tb, fastreuseport) >= 0;
}

/* Names the process that closed a TIME_WAIT's connection, if the tracer
 * saw it: the TIME_WAIT socket keeps the closed socket's cookie. */
static __always_inline void closer_of(struct ps_sock *r, struct sock_common *skc)
{
	__u64 cookie = BPF_CORE_READ(skc, skc_cookie.counter);
	struct ps_closer *c;

	if (!cookie)
		return;
	c = bpf_map_lookup_elem(&closers, &cookie);
	if (!c)
		return;
	r->closer_pid = c->pid;
	r->closer_start_ns = c->start_ns;
	__builtin_memcpy(r->closer_comm, c->comm, sizeof(r->closer_comm));
}

SEC("iter/tcp")
int ports_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct ps_sock r = {};

	if (!skc)
		return 0;
	fill_common(&r, skc);
	r.proto = IPPROTO_TCP;
	if (r.state == TCP_NEW_SYN_RECV)
		return 0; /* a request, not an owner of a port */
	if (r.state == TCP_TIME_WAIT) {
		struct tcp_timewait_sock *tw = bpf_skc_to_tcp_timewait_sock(skc);
		__u64 expires, now = bpf_jiffies64();

		if (!tw)
			return 0;
		r.bind_owner = bucket_owned(BPF_CORE_READ(tw, tw_sk.tw_tb));
		expires = BPF_CORE_READ(tw, tw_sk.tw_timer.expires);
		r.tw_jiffies = expires > now ? expires - now : 0;
		closer_of(&r, skc);
	} else {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);

		if (!tp)
			return 0;
		r.bind_owner = bucket_owned(BPF_CORE_READ(tp, inet_conn.icsk_bind_hash));
		r.ino = sk_ino((struct sock *)tp);
	}
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

SEC("iter/udp")
int ports_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	struct ps_sock r = {};

	if (!udp)
		return 0;
	fill_common(&r, &udp->inet.sk.__sk_common);
	r.proto = IPPROTO_UDP;
	r.bind_owner = 1; /* every UDP socket owns its port */
	r.ino = sk_ino((struct sock *)udp);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keep the record type in BTF so bpf2go emits it for Go. */
const struct ps_sock *_ps_sock __attribute__((unused));
