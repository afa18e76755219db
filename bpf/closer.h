/* Who closed a TCP connection first. A TIME_WAIT socket has no file, no
 * owner and no cgroup; the process behind it is only knowable before, at the
 * active close (ESTABLISHED -> FIN_WAIT1), which runs in that process's own
 * context. The tracer records it there under the socket's cookie, which the
 * kernel copies into the TIME_WAIT socket; the port-pressure iterator
 * (another object, given this map by Go) looks TIME_WAIT sockets up by it. */
#ifndef PORTSLEUTH_CLOSER_H
#define PORTSLEUTH_CLOSER_H

#include "common.h"
#include "sock.h"

/* An LRU: the oldest closes go first, and a TIME_WAIT lasts a minute. Past
 * its size, a TIME_WAIT's closer is forgotten and the socket is counted as
 * no process's (the report shows those apart). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64); /* socket cookie */
	__type(value, struct ps_closer);
} closers SEC(".maps");

#endif
