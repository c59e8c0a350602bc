"""A fault-injecting HTTP proxy in front of ``moto_server``, for the S3 fault tests (``test_s3_faults.py``).

The proxy forwards every request to the real S3 API of moto and applies a scripted fault plan on the way back::

    proxy = S3FaultProxy(moto_endpoint)
    proxy.plan(Fault("get", "status", key="prod/dt=2026-11-01/a.jsonl", times=2, status=503, code="SlowDown"))
    proxy.plan(Fault("list", "reset", times=1, skip=1))        # reset the 2nd listing of any prefix

A request is a ``list`` (GET on the bucket), a ``get`` or a ``head`` (of an object key), or ``other``. A fault
matches by operation, and by key (object operations) or prefix (listings) when given; of the requests it matches
(whichever fault they get), it lets the first ``skip`` through and hits the next ``times`` (``times=None``: every one
after). When several faults would hit a request, the first planned wins. Fault kinds:

- ``status``: answer ``status`` with an S3 XML error body (``code``), without asking moto;
- ``reset``: send the status line, the headers and half the body, then reset the connection (TCP RST);
- ``refuse``: reset the connection before any byte of the response;
- ``truncate``: send the real headers (``Content-Length`` of the whole body) and half the body, then close;
- ``slow``: wait ``delay`` seconds before answering, then send the body in small chunks (``delay`` / 10 apart);
- ``before``: call ``action()`` (e.g. rewrite the object in moto), then forward the request unchanged.

``counts`` tallies, per (operation, key or prefix): ``seen`` requests, ``faulted`` ones and ``ok`` ones (2xx,
forwarded whole), so a test can assert that every object was read exactly once (one ``ok`` GET per key).
"""
from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

KINDS = ("status", "reset", "refuse", "truncate", "slow", "before")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


@dataclass
class Fault:
    op: str                          # list | get | head | other
    kind: str                        # one of KINDS
    key: str | None = None           # object key (get/head) or listing prefix (list); None = any
    times: int | None = 1            # requests hit after the skipped ones; None = every one
    skip: int = 0                    # matching requests let through first
    status: int = 503                # kind "status"
    code: str = "ServiceUnavailable"  # kind "status": the S3 error code of the body
    delay: float = 0.5               # kind "slow"
    action: Callable[[], None] | None = None  # kind "before"
    matched: int = 0                 # matching requests so far

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Fault.kind: {self.kind!r} is not one of {KINDS}")

    def hits(self, op: str, key: str) -> bool:
        """Whether this request gets the fault (counts it as matching)."""
        if op != self.op or (self.key is not None and key != self.key):
            return False
        self.matched += 1
        return self.matched > self.skip and (self.times is None or self.matched <= self.skip + self.times)


def classify(method: str, path: str) -> tuple[str, str]:
    """(operation, key or prefix) of a path-style S3 request: ``/bucket/key`` or ``/bucket?list-type=2&prefix=``."""
    url = urlsplit(path)
    _, _, key = unquote(url.path).lstrip("/").partition("/")
    if method == "GET" and not key:
        return "list", parse_qs(url.query).get("prefix", [""])[0]
    if method in ("GET", "HEAD") and key and not url.query.startswith("uploads"):
        return method.lower(), key
    return "other", key


def error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>proxy</RequestId></Error>").encode()


class S3FaultProxy:
    """``http://127.0.0.1:<port>`` forwarding to ``upstream`` (moto_server) with the faults of ``plan``."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.faults: list[Fault] = []
        self.counts: dict[str, Counter] = {"seen": Counter(), "faulted": Counter(), "ok": Counter()}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="s3-fault-proxy", daemon=True)

    def __enter__(self) -> S3FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def plan(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def reset(self) -> None:
        """No faults and no counts: the next run is fault-free."""
        with self.lock:
            self.faults.clear()
            for counter in self.counts.values():
                counter.clear()

    def ok(self, op: str) -> Counter:
        """Successful requests of ``op`` per key (``ok("get")``: whole objects served)."""
        return Counter({key: n for (o, key), n in self.counts["ok"].items() if o == op})

    def _fault_for(self, op: str, key: str) -> Fault | None:
        with self.lock:
            self.counts["seen"][op, key] += 1
            hit = [f for f in self.faults if f.hits(op, key)]  # each fault counts every request it matches
            fault = hit[0] if hit else None
            if fault is not None:
                self.counts["faulted"][op, key] += 1
            return fault

    def _count_ok(self, op: str, key: str) -> None:
        with self.lock:
            self.counts["ok"][op, key] += 1


def _handler(proxy: S3FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            op, key = classify(self.command, self.path)
            fault = proxy._fault_for(op, key)
            if fault is not None and fault.kind == "status":
                self._send(fault.status, [("Content-Type", "application/xml")],
                           error_body(fault.code, f"injected by the fault proxy ({fault.status} {fault.code})"))
                return
            if fault is not None and fault.kind == "before":
                fault.action()
            if fault is not None and fault.kind == "refuse":
                self._reset()
                return
            status, headers, payload = self._forward(body)
            if fault is None or fault.kind == "before":
                self._send(status, headers, payload)
                if 200 <= status < 300:
                    proxy._count_ok(op, key)
            elif fault.kind == "slow":
                time.sleep(fault.delay)  # the injected fault itself: a slow server
                self._send(status, headers, payload, chunk_delay=fault.delay / 10)
                if 200 <= status < 300:
                    proxy._count_ok(op, key)
            else:  # reset / truncate: the real headers, half the body
                self._send(status, headers, payload, cut=max(len(payload) // 2, 1))
                if fault.kind == "reset":
                    self._reset()
                else:
                    self.close_connection = True

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
                if self.command == "HEAD":  # no body, but the object's length
                    kept.append(("Content-Length", response.getheader("Content-Length", "0")))
                return response.status, kept, payload
            finally:
                conn.close()

        def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes, cut: int | None = None,
                  chunk_delay: float = 0.0) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "HEAD":
                return
            data = payload if cut is None else payload[:cut]
            step = max(len(data) // 10, 1) if chunk_delay else len(data) or 1
            for start in range(0, len(data), step):
                self.wfile.write(data[start:start + step])
                self.wfile.flush()
                if chunk_delay:
                    time.sleep(chunk_delay)

        def _reset(self) -> None:
            """Close with a TCP RST (SO_LINGER 0), as a dropped connection looks to the client."""
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler
