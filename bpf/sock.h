/* Reading a kernel socket: the one copy of each rule, shared by the tracer
 * (state.h) and the port-pressure iterators (ports.bpf.c). No maps here, so
 * each object includes only the maps it uses. TCP states and IPPROTO_*
 * come from vmlinux.h's enums; the AF_* and SOCK_*_LOCK values are macros
 * in the kernel, absent from BTF, so they are defined once, here. */
#ifndef PORTSLEUTH_SOCK_H
#define PORTSLEUTH_SOCK_H

#include "common.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_BINDADDR_LOCK 4
#define SOCK_BINDPORT_LOCK 8

/* Both ends of a socket: addresses (4 or 16 bytes by family), ports in host
 * order. TIME_WAIT and request sockets are only a sock_common: this is all
 * they have. */
static __always_inline void skc_endpoints(struct sock_common *skc, __u8 family, __u8 *laddr, __u8 *raddr,
					  __u16 *lport, __u16 *rport)
{
	*lport = BPF_CORE_READ(skc, skc_num);
	*rport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	if (family == AF_INET) {
		bpf_core_read(laddr, 4, &skc->skc_rcv_saddr);
		bpf_core_read(raddr, 4, &skc->skc_daddr);
	} else {
		bpf_core_read(laddr, 16, &skc->skc_v6_rcv_saddr);
		bpf_core_read(raddr, 16, &skc->skc_v6_daddr);
	}
}

/* SO_REUSEADDR and SO_REUSEPORT, which every socket (a TIME_WAIT included)
 * keeps in its sock_common. */
static __always_inline __u16 skc_reuse_options(struct sock_common *skc)
{
	__u16 o = 0;

	if (BPF_CORE_READ_BITFIELD_PROBED(skc, skc_reuse))
		o |= PS_OPT_REUSEADDR;
	if (BPF_CORE_READ_BITFIELD_PROBED(skc, skc_reuseport))
		o |= PS_OPT_REUSEPORT;
	return o;
}

/* The inode of a socket's file, as /proc/PID/fd shows it (socket:[ino]):
 * the inode lives beside the struct socket, so no file needs to exist. */
static __always_inline __u64 socket_ino(struct socket *sock)
{
	struct socket_alloc *sa = container_of(sock, struct socket_alloc, socket);

	if (!sock)
		return 0;
	return BPF_CORE_READ(sa, vfs_inode.i_ino);
}

static __always_inline __u64 sk_ino(struct sock *sk)
{
	return socket_ino(BPF_CORE_READ(sk, sk_socket));
}

#endif
