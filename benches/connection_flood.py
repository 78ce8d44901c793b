#!/usr/bin/env python3
"""How long other clients wait while one client floods the API with idle connections.

Run against a `cohort api` (or worker) listening on 127.0.0.1:18080:

    COHORT_HTTP_LISTEN=127.0.0.1:18080 cohort api &
    python3 benches/connection_flood.py

It opens 1,100 TCP connections from 127.0.0.1 and sends nothing on them (more than the 1,024 connection
slots), then times 20 `GET /healthz` requests from 127.0.0.2 (Linux routes all of 127/8 to loopback), and
counts the idle connections the server closed at once (over `http.max_connections_per_client`).
"""
import socket
import time

held = []
refused = 0
for i in range(1100):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.connect(("127.0.0.1", 18080)); held.append(s)
    except OSError:
        refused += 1
time.sleep(0.5)
times = []
for i in range(20):
    c = socket.socket(); c.bind(("127.0.0.2", 0))
    t = time.monotonic()
    c.connect(("127.0.0.1", 18080))
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = c.recv(4096)
    times.append((time.monotonic() - t) * 1000)
    c.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:60]
# how many of the held ones were closed by the server (cap / first-request deadline)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        d = s.recv(4096)
        if d == b"" or d.startswith(b"HTTP/1.1 503"): closed += 1
    except BlockingIOError:
        pass
times.sort()
print(f"held {len(held)} idle connections; closed by the server at once: {closed}; other client's /healthz: median {times[10]:.1f} ms, max {times[-1]:.1f} ms over 20")
