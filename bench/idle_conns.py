#!/usr/bin/env python3
"""Open N idle HTTP/1.1 keep-alive connections and report the server's RSS growth.

Each connection sends one keep-alive GET, reads the whole response, and is then held open
idle.  The resident memory (VmRSS from /proc/PID/status, summed over the given pids: for
nginx that is the master plus its workers) is read before any connection is opened and again
once all of them are idle, after a short settle time.  Connections are closed with an RST
(SO_LINGER 0) so repeated runs do not fill the ephemeral port range with TIME_WAIT sockets.

Standard library only.  Prints one line:
  IDLERESULT target=N ok=N failed=N rss_before_kib=N rss_with_kib=N bytes_per_conn=N open_s=S
"""

import argparse
import selectors
import socket
import struct
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass  # a process that went away counts as 0
    return total


class Conn:
    __slots__ = ("sock", "buf", "state")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.state = "connecting"  # -> "reading" -> "idle" | "failed"


def response_complete(buf):
    """True once buf holds a full response with a Content-Length (or chunked end)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = buf[:head_end].decode("latin-1").lower()
    body = len(buf) - head_end - 4
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip() == "content-length":
            return body >= int(value.strip())
        if name.strip() == "transfer-encoding" and "chunked" in value:
            return buf.endswith(b"0\r\n\r\n")
    return True  # no body framing: e.g. 204/304


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--pids", required=True, help="comma-separated pids whose RSS is summed")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait once all are idle")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up opening after this")
    args = ap.parse_args()

    pids = [int(p) for p in args.pids.split(",") if p]
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
               "User-Agent: weir-bench-idle\r\n\r\n").encode()
    linger = struct.pack("ii", 1, 0)

    before = rss_kib(pids)
    sel = selectors.DefaultSelector()
    conns = []
    started = time.monotonic()
    deadline = started + args.timeout
    batch = 200  # keep the accept queue shallow: open in batches
    pending = 0
    next_i = 0
    while next_i < args.connections or pending:
        while next_i < args.connections and pending < batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.setblocking(False)
            c = Conn(s)
            try:
                s.connect_ex((args.host, args.port))
            except OSError:
                c.state = "failed"
                conns.append(c)
                next_i += 1
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
            conns.append(c)
            next_i += 1
            pending += 1
        if time.monotonic() > deadline:
            break
        for key, mask in sel.select(timeout=1.0):
            c = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    c.sock.sendall(request)
                    c.state = "reading"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                elif c.state == "reading":
                    data = c.sock.recv(65536)
                    if not data:
                        raise OSError("closed by server")
                    c.buf += data
                    if response_complete(c.buf):
                        ok = c.buf.startswith(b"HTTP/1.1 2")
                        c.state = "idle" if ok else "failed"
                        c.buf = b""
                        sel.unregister(c.sock)
                        pending -= 1
            except OSError:
                c.state = "failed"
                sel.unregister(c.sock)
                pending -= 1
    open_s = time.monotonic() - started

    time.sleep(args.settle)
    # a connection the server dropped while idle reads EOF: count it as failed
    alive = 0
    for c in conns:
        if c.state != "idle":
            continue
        try:
            data = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data == b"":
                c.state = "failed"
                continue
        except BlockingIOError:
            pass
        except OSError:
            c.state = "failed"
            continue
        alive += 1
    with_conns = rss_kib(pids)
    failed = args.connections - alive
    per_conn = round((with_conns - before) * 1024 / alive) if alive else 0
    print(f"IDLERESULT target={args.connections} ok={alive} failed={failed} "
          f"rss_before_kib={before} rss_with_kib={with_conns} bytes_per_conn={per_conn} "
          f"open_s={open_s:.2f}")
    sys.stdout.flush()
    for c in conns:
        c.sock.close()


if __name__ == "__main__":
    main()
