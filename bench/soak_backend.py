#!/usr/bin/env python3
"""A small HTTP/1.1 keep-alive backend for bench/soak.sh: GET/HEAD answer a short body (2 MiB for
paths ending in /big), POST reads its body and answers its length. Usage: soak_backend.py PORT"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, body, head=False):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self):
        self.reply(b"b" * (2 << 20) if self.path.endswith("/big") else b"ok\n")

    def do_HEAD(self):
        self.reply(b"ok\n", head=True)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                return
            got += len(chunk)
        self.reply(b"%d\n" % got)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
