/* Tracepoint backend: syscalls:sys_{enter,exit}_{bind,connect}. At entry the
 * fd is resolved to the kernel socket and the requested sockaddr is copied
 * from user memory. Sees only what passes through these two syscalls. */
#ifndef PORTSLEUTH_SYSCALL_H
#define PORTSLEUTH_SYSCALL_H

#define S_IFMT 00170000
#define S_IFSOCK 0140000

#include "state.h"

static __always_inline struct sock *fd_sock(int fd, __u64 *ino)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;
	struct inode *inode;
	struct socket *sock;

	if (fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	inode = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	*ino = BPF_CORE_READ(inode, i_ino);
	sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

static __always_inline int sys_enter(struct trace_event_raw_sys_enter *ctx, __u8 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	const void *uaddr = (const void *)ctx->args[1];
	__u8 sa[28] = {}; /* sizeof(struct sockaddr_in6) */
	struct call c = {};
	struct sock *sk;

	if (!traced_pid(id))
		return 0;
	sk = fd_sock((int)ctx->args[0], &c.sock_ino);
	if (call_init(&c, op, PS_SRC_SYSCALL, sk))
		return 0;
	/* A sockaddr_in may end at a page boundary: retry with its own size. */
	if (op != PS_OP_LISTEN && bpf_probe_read_user(sa, sizeof(sa), uaddr) &&
	    bpf_probe_read_user(sa, 16, uaddr))
		return 0;
	if (op == PS_OP_LISTEN) {
		sock_local(sk, c.family, c.laddr, &c.lport);
	} else if (op == PS_OP_BIND) {
		if (parse_sockaddr(sa, c.family, c.laddr, &c.lport))
			return 0;
	} else {
		if (parse_sockaddr(sa, c.family, c.daddr, &c.dport))
			return 0;
		sock_local(sk, c.family, c.laddr, &c.lport);
	}
	call_store(id, &c);
	return 0;
}

/* The kernel's restart codes (ERESTARTSYS 512 to ERESTART_RESTARTBLOCK 516,
 * include/linux/errno.h) never reach user space: a call a signal interrupted
 * runs again from sys_enter (SA_RESTART), or returns EINTR. Finishing it at
 * this exit would count one connect() twice, once as an error. The EINTR
 * case goes uncounted: other errors are context, failures never end so. */
static __always_inline int sys_exit(__u8 op, long ret)
{
	if (ret <= -512 && ret >= -516) {
		__u64 id = bpf_get_current_pid_tgid();

		bpf_map_delete_elem(&calls, &id);
		return 0;
	}
	return call_finish(op, ret);
}

SEC("tracepoint/syscalls/sys_enter_bind")
int tp_enter_bind(struct trace_event_raw_sys_enter *ctx)
{
	return sys_enter(ctx, PS_OP_BIND);
}

SEC("tracepoint/syscalls/sys_exit_bind")
int tp_exit_bind(struct trace_event_raw_sys_exit *ctx)
{
	return sys_exit(PS_OP_BIND, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_connect")
int tp_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	return sys_enter(ctx, PS_OP_CONNECT);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int tp_exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	return sys_exit(PS_OP_CONNECT, ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_listen")
int tp_enter_listen(struct trace_event_raw_sys_enter *ctx)
{
	return sys_enter(ctx, PS_OP_LISTEN);
}

SEC("tracepoint/syscalls/sys_exit_listen")
int tp_exit_listen(struct trace_event_raw_sys_exit *ctx)
{
	return sys_exit(PS_OP_LISTEN, ctx->ret);
}

#endif
