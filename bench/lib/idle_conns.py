#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to HOST:PORT, send one GET on each and read its answer,
then hold them all open and idle. Prints `ready OPEN` once every connection has had its answer,
then sleeps HOLD seconds (or until killed) and exits.

    idle_conns.py 127.0.0.1 19012 1000 30
"""
import socket
import sys
import time


def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    req = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n\r\n".encode()
    socks = []
    failed = 0
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(req)
            read_response(s)
            socks.append(s)
        except OSError as e:
            failed += 1
            print(f"connection failed: {e}", file=sys.stderr)
    print(f"ready {len(socks)} failed {failed}", flush=True)
    time.sleep(hold)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
