#!/usr/bin/env python3
"""Slow and stalled HTTP/1.1 clients for bench/soak.sh, for SECONDS seconds: N threads, each in a
loop opening a connection and doing one of
  upload   POST a 4 KB body at BYTES_PER_S bytes/s (the balancer answers 408 once the body falls
           below [listener] min_body_rate, or the body completes)
  head     send a request head a few bytes at a time, then stall (408 or close at
           header_read_timeout)
  idle     connect and send nothing (closed at header_read_timeout)
Prints one JSON line of counts per mode and outcome at the end.

    slow_clients.py 127.0.0.1 19580 20 3600 [BYTES_PER_S]
"""
import json
import random
import socket
import sys
import threading
import time
from collections import Counter

HOST, PORT = sys.argv[1], int(sys.argv[2])
THREADS, SECONDS = int(sys.argv[3]), float(sys.argv[4])
RATE = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
END = time.monotonic() + SECONDS
counts = Counter()
lock = threading.Lock()


def note(key):
    with lock:
        counts[key] += 1


def status_of(s):
    """The status code of the answer, or 'closed' when the connection ends without one."""
    buf = b""
    while b"\r\n" not in buf:
        try:
            chunk = s.recv(4096)
        except OSError:
            return "reset"
        if not chunk:
            return "closed"
        buf += chunk
    return buf.split(b" ", 2)[1].decode(errors="replace")


def upload(s):
    size = 4096
    s.sendall(
        f"POST /slow-upload HTTP/1.1\r\nHost: soak\r\nContent-Length: {size}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    sent, step = 0, max(1, int(RATE / 4))
    while sent < size and time.monotonic() < END:
        try:
            s.sendall(b"x" * min(step, size - sent))
        except OSError:
            break
        sent += step
        time.sleep(0.25)
    return status_of(s)


def head(s):
    for b in (b"GET /slow-he", b"ad HTTP/1.1\r\n", b"Host: so", b"ak\r\nX-A: "):
        s.sendall(b)
        time.sleep(1.0)
    return status_of(s)


def idle(s):
    return status_of(s)


def worker(seed):
    rng = random.Random(seed)
    modes = [("upload", upload), ("head", head), ("idle", idle)]
    while time.monotonic() < END:
        name, fn = rng.choice(modes)
        try:
            with socket.create_connection((HOST, PORT), timeout=60) as s:
                outcome = fn(s)
        except OSError as e:
            outcome = type(e).__name__
        note(f"{name}:{outcome}")


threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=max(0.0, END - time.monotonic()) + 70)
print(json.dumps(dict(sorted(counts.items()))))
