/* The wire layout between the BPF programs and the Go agent. This file is the
 * only definition: Go gets every type here through bpf2go -type. Fields are
 * ordered largest first and compiled with -Wpadded, so no hidden padding. */
#ifndef PORTSLEUTH_COMMON_H
#define PORTSLEUTH_COMMON_H

enum ps_op {
	PS_OP_BIND = 1,
	PS_OP_CONNECT = 2,
	/* listen() runs get_port again: for an unbound socket (port-0 exhaustion)
	 * and for a port two SO_REUSEADDR binds share (second listener conflicts). */
	PS_OP_LISTEN = 3,
};

/* Socket options in effect on the socket at the time of the call. */
enum ps_opt {
	PS_OPT_REUSEADDR = 1 << 0,
	PS_OPT_REUSEPORT = 1 << 1,
	PS_OPT_BIND_ADDRESS_NO_PORT = 1 << 2,
	PS_OPT_FREEBIND = 1 << 3,
	PS_OPT_TRANSPARENT = 1 << 4,
	PS_OPT_V6ONLY = 1 << 5,
};

/* The layer that saw a call. */
enum ps_source {
	PS_SRC_SYSCALL = 1,          /* syscalls:sys_{enter,exit}_{bind,connect} */
	PS_SRC_INET_BIND = 2,
	PS_SRC_INET6_BIND = 3,
	PS_SRC_INET_HASH_CONNECT = 4,
	PS_SRC_INET6_HASH_CONNECT = 5,
	PS_SRC_INET_CSK_GET_PORT = 6,  /* listen(), kernel layer */
	/* cgroup backend: the errno of these is inferred, not seen. */
	PS_SRC_CGROUP_BIND = 7,        /* cgroup/bind{4,6} without post_bind{4,6} */
	PS_SRC_CGROUP_CONNECT = 8,     /* cgroup/connect{4,6} + inet_sock_set_state */
};

/* Facts about a failed call that decide its pattern; part of the failure key. */
enum ps_flag {
	/* bind: the requested port was 0. connect: the socket had no bound port. */
	PS_F_PORT0 = 1 << 0,
	/* bind: the requested address was 0.0.0.0 or ::. connect: no bound address. */
	PS_F_ANYADDR = 1 << 1,
};

/* One failed bind() or connect(), streamed through the ring buffer. */
struct ps_event {
	__u64 ts_ns;       /* CLOCK_MONOTONIC */
	__u64 netns;       /* inode of the socket's network namespace */
	__u64 netns_cookie; /* which namespace: its inode number is reused, this never */
	__u64 cgroup_id;   /* cgroup v2 id of the calling task */
	__u64 start_ns;    /* the process's start time: (pid, start_ns) is its identity */
	__u64 sock_ino;    /* socket inode, as in /proc/PID/fd -> socket:[ino] */
	__u32 pid;         /* thread-group id */
	__u32 tid;
	__s32 err;         /* positive errno */
	__u16 options;     /* enum ps_opt bits */
	__u16 flags;       /* enum ps_flag bits */
	__u8 op;           /* enum ps_op */
	__u8 family;       /* AF_INET or AF_INET6 */
	__u8 proto;        /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 state;        /* socket state (TCP_*) when the call started */
	__u16 lport;       /* bind: requested port; connect: bound local port, 0 if none */
	__u16 dport;       /* connect: destination port */
	__u8 laddr[16];    /* bind: requested address; connect: bound local address */
	__u8 daddr[16];    /* connect: destination address */
	char comm[16];     /* the process (thread-group leader) name */
	char tcomm[16];    /* the calling thread's name */
	/* Kernel layer, connect: candidate ports whose 4-tuple was taken, by a
	 * TIME_WAIT socket that could not be reused / by a live connection. */
	__u32 tw_blocked;
	__u32 est_blocked;
	/* Kernel layer, bind EADDRINUSE: the socket that holds the port. */
	__u64 holder_ino;  /* its inode; 0 for TIME_WAIT (no socket) or unknown */
	__u8 holder_laddr[16];
	__u8 holder_daddr[16];
	__u16 holder_lport;
	__u16 holder_dport;
	__u8 holder_state; /* TCP_* state, 0 when no holder was seen */
	__u8 holder_options; /* enum ps_opt bits: SO_REUSEADDR, SO_REUSEPORT */
	__u8 source;       /* enum ps_source */
	__u8 _pad;
};

/* A process: a reused pid with a new start time is another process. */
struct ps_proc_key {
	__u64 start_ns;    /* the thread-group leader's start_time (ns since boot) */
	__u32 pid;
	__u32 _pad;
};

/* Key of the in-kernel failure counters: exact counts whatever the ring
 * buffer drops. Entered only by failures, never evicted. Once the table is
 * full, failures are counted per class alone (pid and start_ns zero). */
struct ps_fail_key {
	__u64 start_ns;
	__u32 pid;
	__s32 err;
	__u8 op;
	__u8 proto;
	__u8 family;
	__u8 flags;
	__u32 _pad;
};

/* Per-process call counters, shared by all CPUs (atomic adds). Context for a
 * report (calls that succeeded, port-0 history): kept in an LRU, since every
 * process that calls bind/connect has one; failure counts live apart. */
struct ps_proc_stats {
	__u64 binds_ok;
	__u64 binds_failed;       /* failures that produced an event */
	__u64 binds_other;        /* failures outside the traced set (EINVAL, EBADF...) */
	__u64 connects_ok;        /* 0 or EINPROGRESS: a local port was found */
	__u64 connects_failed;
	__u64 connects_other;     /* ECONNREFUSED, ENETUNREACH, ...: not address errors */
	__u64 port0_binds_ok;     /* successful binds where the kernel picked the port */
	__u64 port0_bind_connects;/* connect() calls on sockets a port-0 bind had bound */
	/* Kernel layer: candidate ports connect() found taken, summed over calls. */
	__u64 connect_tw_blocked;
	__u64 connect_est_blocked;
	__u64 listens_ok;
	__u64 listens_failed;
};

enum ps_meta_flag {
	/* The process descends (by fork) from the command `report -- CMD` runs. */
	PS_META_IN_COMMAND = 1 << 0,
	/* Set last: the record is complete (a name can be empty). */
	PS_META_FILLED = 1 << 1,
};

/* Process identity recorded at its first failure, for processes gone before
 * Go could ask /proc. Keyed by struct ps_proc_key. */
struct ps_proc_meta {
	__u64 netns;
	__u64 cgroup_id;
	__u64 parent_start_ns; /* the parent process, for a traced command's tree */
	__u32 ppid;
	__u32 flags;       /* enum ps_meta_flag */
	char comm[16];
	char args[128];    /* start of the command line, NUL-separated */
};

/* Port-allocation sysctls of a network namespace, read from struct net at the
 * first failure in it: a short-lived namespace is gone before Go could look. */
struct ps_netns {
	/* Which namespace this is: the kernel gives a destroyed namespace's
	 * inode number to the next one it makes, never its cookie (before 5.12
	 * the struct's address stands in: see snapshot_netns). */
	__u64 cookie;
	__u16 port_lo;
	__u16 port_hi;
	__u8 tcp_tw_reuse;
	__u8 ip_autobind_reuse; /* 0xff: this kernel has no such sysctl */
	__u8 tcp_timestamps;
	__u8 ip_nonlocal_bind;
};

/* The process that closed a connection first: its side keeps the TIME_WAIT,
 * which has no file and no owner once it exists. Recorded in that process's
 * own context at the close (ESTABLISHED -> FIN_WAIT1). */
struct ps_closer {
	__u64 start_ns;
	__u32 pid;
	char comm[16];
	__u32 _pad;
};

/* One socket as the port-pressure iterators (iter/tcp, iter/udp) see it. */
struct ps_sock {
	__u64 ino;          /* socket inode; 0 for TIME_WAIT and request sockets */
	__u64 tw_jiffies;   /* TIME_WAIT: jiffies until it goes */
	__u8 laddr[16];
	__u8 raddr[16];
	__u64 closer_start_ns; /* and its start time: the pid may belong to another process now */
	__u32 closer_pid;   /* TIME_WAIT: the process that closed first, 0 if unknown */
	__u16 lport;
	__u16 rport;
	__u8 family;
	__u8 proto;
	__u8 state;
	/* The port's bind bucket has a bind()/listen() owner (fastreuse >= 0 or
	 * fastreuseport >= 0): connect() skips that port for every destination. */
	__u8 bind_owner;
	__u8 options;       /* enum ps_opt: SO_REUSEADDR, SO_REUSEPORT */
	__u8 _pad[3];
	char closer_comm[16];
};

#endif
