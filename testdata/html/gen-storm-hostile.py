"""Writes storm-hostile.json: see README.md."""
import json

NETNS = 4026532177
T0 = "2026-11-22T03:01:%02d.%06dZ"
BIND = {"op": "bind", "proto": "tcp", "family": "ipv4", "errno": 98, "port0": True, "any_addr": True}
CONN = {"op": "connect", "proto": "tcp", "family": "ipv4", "errno": 99, "port0": True, "any_addr": True}
A = {"pid": 4242, "comm": "</script><svg onload=alert(1)>", "thread": "\u001b]0;OWNED\u0007\u001b[2J",
     "cmdline": "beam.smp -- \"><img src=x onerror=alert(2)> </title></desc></svg><iframe src=http://evil.example/>"}
B = {"pid": 4343, "comm": "curl\u202etxt.exe", "thread": "{{.R}}\u0000",
     "cmdline": "curl http://evil.example/\u2066 <script src=//evil.example/x.js></script>"}


def event(p, cls, sec, i, addr, dest):
    return {"time": T0 % (sec, (i * 7919) % 1000000), "pid": p["pid"], "start_ns": 0, "tid": p["pid"],
            "comm": p["comm"], "thread": p["thread"], "class": cls, "addr": addr, "dest": dest,
            "options": [], "netns": NETNS, "cgroup_id": 1, "sock_ino": 0, "source": ""}


events = []
for sec in range(30):
    for i in range(3 * sec + 1):
        events.append(event(A, BIND, sec, i, "0.0.0.0:0", ""))
for sec in range(15, 30):
    for i in range(10):
        events.append(event(B, CONN, sec, i, "0.0.0.0:0", "127.0.0.1:8080"))
events.sort(key=lambda e: e["time"])
a_fail = sum(1 for e in events if e["pid"] == A["pid"])
b_fail = sum(1 for e in events if e["pid"] == B["pid"])
rec = {
    "schema": 2,
    "procs": [
        {"pid": A["pid"], "start_ns": 0,
         "stats": {"binds_ok": 28300, "binds_failed": a_fail, "binds_other": 0, "connects_ok": 28300, "connects_failed": 0,
                   "connects_other": 0, "port0_binds_ok": 28300, "port0_bind_connects": 28300},
         "meta": {"comm": A["comm"], "cmdline": A["cmdline"], "netns": NETNS, "cgroup_id": 1}},
        {"pid": B["pid"], "start_ns": 0,
         "stats": {"binds_ok": 0, "binds_failed": 0, "binds_other": 0, "connects_ok": 64, "connects_failed": b_fail + 50,
                   "connects_other": 0, "port0_binds_ok": 0, "port0_bind_connects": 0},
         "meta": {"comm": B["comm"], "cmdline": B["cmdline"], "netns": NETNS, "cgroup_id": 1}},
    ],
    "failures": [
        {"pid": A["pid"], "start_ns": 0, "class": BIND, "count": a_fail},
        # 50 more than arrived as events: the page must say they were missed.
        {"pid": B["pid"], "start_ns": 0, "class": CONN, "count": b_fail + 50},
    ],
    "netns": {str(NETNS): {"netns": NETNS, "ip_local_port_range": [32768, 60999], "ip_local_reserved_ports": "",
                           "reserved_in_range": 0, "tcp_tw_reuse": 2, "ip_autobind_reuse": 0, "tcp_timestamps": 1,
                           "ip_nonlocal_bind": 0, "tcp_max_tw_buckets": 0, "source": "kernel"}},
    "lost": 50,
    "events": events,
}
print(json.dumps(rec, separators=(",", ":")))
