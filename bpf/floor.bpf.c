// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The floor of each backend's cost: programs that do nothing, on exactly the
 * hooks the backend attaches (same section names, same program names where
 * the loader picks by name). `make bench` attaches them instead of the real
 * ones to measure what having the hooks at all costs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* cgroup backend */
SEC("cgroup/bind4")
int cg_bind4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/bind6")
int cg_bind6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/post_bind4")
int cg_post_bind4(struct bpf_sock *ctx) { return 1; }
SEC("cgroup/post_bind6")
int cg_post_bind6(struct bpf_sock *ctx) { return 1; }
SEC("cgroup/connect4")
int cg_connect4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/connect6")
int cg_connect6(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/sock_release")
int cg_sock_release(struct bpf_sock *ctx) { return 1; }
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(cg_sock_state, struct sock *sk, int oldstate, int newstate) { return 0; }

/* tracepoint backend */
SEC("tracepoint/syscalls/sys_enter_bind")
int tp_enter_bind(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_bind")
int tp_exit_bind(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_enter_connect")
int tp_enter_connect(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_connect")
int tp_exit_connect(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_enter_listen")
int tp_enter_listen(void *ctx) { return 0; }
SEC("tracepoint/syscalls/sys_exit_listen")
int tp_exit_listen(void *ctx) { return 0; }
/* the closer program every backend but cgroup adds */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ps_closer, struct sock *sk, int oldstate, int newstate) { return 0; }
