"""Transport of the LLM judge client: one keep-alive connection per request in flight.

A single ``httpx.AsyncClient`` shared by 16 concurrent requests re-scans its whole connection pool (every
connection's socket, through anyio's typed attributes) on each request and response; on a 2-core machine that was
~0.5 ms of event-loop time per request, serialising the answers of a wave of 16. One client per concurrency slot,
each with one connection, keeps that bookkeeping constant. The TLS context is built once per process (loading the
CA bundle costs ~50 ms per client).
"""
from __future__ import annotations

import functools

import httpx

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


@functools.cache
def tls_context():
    """httpx's default TLS context, built once per process (loading the CA bundle costs ~50 ms a client)."""
    return httpx.create_ssl_context()


class Connections:
    """One ``httpx.AsyncClient`` with one keep-alive connection per request in flight (checked out, given back)."""

    def __init__(self):
        self.idle: list[httpx.AsyncClient] = []
        self.every: list[httpx.AsyncClient] = []

    async def post(self, url: str, **kwargs) -> httpx.Response:
        if not self.idle:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            self.every.append(httpx.AsyncClient(limits=limits, verify=tls_context()))
            self.idle.append(self.every[-1])
        http = self.idle.pop()
        try:
            return await http.post(url, **kwargs)
        finally:
            self.idle.append(http)

    async def aclose(self) -> None:
        for http in self.every:
            await http.aclose()
