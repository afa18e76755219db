/* Who closed a TCP connection first. A TIME_WAIT socket has no file, no
 * owner and no cgroup; the process behind it is only knowable before, at the
 * active close (ESTABLISHED -> FIN_WAIT1), which runs in that process's own
 * context. The tracer records it there; the port-pressure iterator (another
 * object, given this map by Go) looks TIME_WAIT sockets up in it. */
#ifndef PORTSLEUTH_CLOSER_H
#define PORTSLEUTH_CLOSER_H

#include "common.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* An LRU: the oldest closes go first, and a TIME_WAIT lasts a minute. Past
 * its size, a TIME_WAIT's closer is forgotten and the socket is counted as
 * no process's (the report shows those apart). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ps_tuple);
	__type(value, struct ps_closer);
} closers SEC(".maps");

/* The connection's key as both sides of the map build it. Returns -1 for a
 * family that is not IP. */
static __always_inline int tuple_of(struct sock_common *skc, struct ps_tuple *k)
{
	k->family = BPF_CORE_READ(skc, skc_family);
	if (k->family != AF_INET && k->family != AF_INET6)
		return -1;
	k->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
	k->lport = BPF_CORE_READ(skc, skc_num);
	k->rport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	if (k->family == AF_INET) {
		bpf_core_read(k->laddr, 4, &skc->skc_rcv_saddr);
		bpf_core_read(k->raddr, 4, &skc->skc_daddr);
	} else {
		bpf_core_read(k->laddr, 16, &skc->skc_v6_rcv_saddr);
		bpf_core_read(k->raddr, 16, &skc->skc_v6_daddr);
	}
	return 0;
}

#endif
