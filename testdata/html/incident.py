#!/usr/bin/env python3
"""Two seed incidents paced over a few seconds, for the HTML report's README
screenshots (a timeline needs more than one second of failures). Run inside a
fresh network namespace with a 64-port range; see screenshots/README.md.

  incident.py erlang    bind(0.0.0.0:0) before every connect(), 12 per second
  incident.py timewait  connect, then close first (TIME_WAIT), 24 per second
"""
import socket
import sys
import threading
import time

DEST = ("127.0.0.1", 8080)
SECONDS = 8


def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(DEST)
    s.listen(4096)
    return s


def erlang():
    lst = listener()
    held = []
    for _ in range(SECONDS):
        for _ in range(12):
            s = socket.socket()
            try:
                s.bind(("0.0.0.0", 0))
                s.connect(DEST)
                held.append(s)
            except OSError:
                s.close()
        time.sleep(1)
    lst.close()


def timewait():
    lst = listener()
    accepted = []

    def accept():
        while True:
            try:
                c, _ = lst.accept()
            except OSError:
                return
            accepted.append(c)

    threading.Thread(target=accept, daemon=True).start()
    for _ in range(SECONDS):
        for _ in range(24):
            s = socket.socket()
            try:
                s.connect(DEST)
            except OSError:
                s.close()
                continue
            s.close()  # this side closes first: the port stays in TIME_WAIT
        time.sleep(1)


{"erlang": erlang, "timewait": timewait}[sys.argv[1]]()
