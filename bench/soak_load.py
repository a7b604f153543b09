#!/usr/bin/env python3
"""Mixed, rate-limited load with faults for bench/soak.sh: not a benchmark, a leak hunt.

Threads, each bounded by --duration: keep-alive GET/POST clients, fresh-connection clients,
malformed and smuggling requests, slowloris heads, bodies aborted midway, clients that vanish
mid-response, and 1 MiB uploads. Prints a count per outcome at the end.
"""

import argparse
import collections
import http.client
import random
import socket
import threading
import time

counts = collections.Counter()
lock = threading.Lock()


def note(what):
    with lock:
        counts[what] += 1


def paced(stop, rate, fn):
    gap = 1.0 / rate
    while time.time() < stop:
        t = time.time()
        try:
            fn()
        except Exception as e:  # a fault is an outcome, not a crash
            note("error:" + type(e).__name__)
        time.sleep(max(0.0, gap - (time.time() - t)))


def keepalive(addr, stop, rate):
    conn = [None]

    def one():
        if conn[0] is None:
            conn[0] = http.client.HTTPConnection(*addr, timeout=10)
        c = conn[0]
        try:
            if random.random() < 0.3:
                c.request("POST", "/api/echo", body=b"x" * random.randint(0, 64 * 1024))
            else:
                c.request("GET", "/api/%d" % random.randint(0, 1000))
            r = c.getresponse()
            r.read()
            note("keepalive:%d" % r.status)
        except Exception:
            conn[0].close()
            conn[0] = None
            raise

    paced(stop, rate, one)


def fresh(addr, stop, rate):
    def one():
        c = http.client.HTTPConnection(*addr, timeout=10)
        c.request("GET", "/static/%d" % random.randint(0, 10))
        r = c.getresponse()
        r.read()
        c.close()
        note("fresh:%d" % r.status)

    paced(stop, rate, one)


BAD = [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"\x16\x03\x01\x00\xa5garbage",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
]


def raw(addr, payload, read=True):
    s = socket.create_connection(addr, timeout=10)
    try:
        s.sendall(payload)
        if read:
            data = s.recv(200)
            return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "eof"
    finally:
        s.close()


def malformed(addr, stop, rate):
    paced(stop, rate, lambda: note("malformed:%s" % raw(addr, random.choice(BAD))))


def slowloris(addr, stop, rate):
    def one():
        s = socket.create_connection(addr, timeout=10)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n")
        try:
            for _ in range(100):
                s.sendall(b"X-a: b\r\n")
                time.sleep(0.2)
            note("slowloris:survived")
        except OSError:
            note("slowloris:cut")
        finally:
            s.close()

    paced(stop, rate, one)


def aborted(addr, stop, rate):
    def one():
        kind = random.choice(["body", "response"])
        if kind == "body":
            raw(addr, b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100, read=False)
        else:
            raw(addr, b"GET /api/big HTTP/1.1\r\nHost: h\r\n\r\n", read=False)
        note("aborted:" + kind)

    paced(stop, rate, one)


def upload(addr, stop, rate):
    def one():
        c = http.client.HTTPConnection(*addr, timeout=20)
        c.request("POST", "/api/upload", body=b"u" * (1 << 20))
        r = c.getresponse()
        r.read()
        c.close()
        note("upload:%d" % r.status)

    paced(stop, rate, one)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--rate", type=float, default=50.0, help="keep-alive requests/s per client")
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    addr = (host, int(port))
    stop = time.time() + a.duration
    jobs = [(keepalive, a.rate)] * 4 + [
        (fresh, a.rate / 2),
        (malformed, 10),
        (slowloris, 2),
        (aborted, 5),
        (upload, 1),
    ]
    threads = [threading.Thread(target=f, args=(addr, stop, r), daemon=True) for f, r in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.duration + 60)
    for k, v in sorted(counts.items()):
        print("%-28s %d" % (k, v))


if __name__ == "__main__":
    main()
