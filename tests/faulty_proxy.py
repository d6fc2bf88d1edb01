"""A small HTTP proxy for fault injection: forwards to the S3 server, failing some requests.

Every ``slowdown_every``-th request is answered 503 SlowDown, and every ``reset_every``-th has its
connection dropped without an answer; a GET whose path holds ``always_fail`` always gets a 503.
Deterministic counters, so a test fails the same way twice.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


class FaultyProxy:
    def __init__(self, upstream: str, *, slowdown_every: int = 5, reset_every: int = 7,
                 always_fail: str | None = None) -> None:
        self.upstream = urlparse(upstream)
        self.counter = itertools.count(1)
        self.lock = threading.Lock()
        self.injected = {"slowdown": 0, "reset": 0, "forwarded": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                with proxy.lock:
                    n = next(proxy.counter)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                unreadable = bool(always_fail and always_fail in self.path
                                  and self.command == "GET")
                if reset_every and n % reset_every == 0 and not unreadable:
                    proxy.injected["reset"] += 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if unreadable or (slowdown_every and n % slowdown_every == 0):
                    proxy.injected["slowdown"] += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                  timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.upstream.hostname}:{proxy.upstream.port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                proxy.injected["forwarded"] += 1
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
