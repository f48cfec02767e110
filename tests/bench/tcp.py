#!/usr/bin/env python3
"""TCP throughput between two network namespaces, for tests/bench/agents.sh.

    tcp.py serve PORT READY_FILE      accept one connection, read it to the end
    tcp.py send HOST PORT MIB         send MIB MiB, print MiB/s once the peer has read it all

1 MiB writes and reads; the same program on both sides of every path measured."""
import socket
import sys
import time

if sys.argv[1] == "serve":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.listen(1)
    s.settimeout(60)
    open(sys.argv[3], "w").close()
    c, _ = s.accept()
    c.settimeout(120)
    buf = bytearray(1 << 20)
    while c.recv_into(buf):
        pass
    c.close()
else:
    host, port, mib = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((host, port), timeout=10)
    c.settimeout(120)
    data = bytes(1 << 20)
    t = time.monotonic()
    for _ in range(mib):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # the peer closes once it has read everything
    print("%.0f" % (mib / (time.monotonic() - t)))
