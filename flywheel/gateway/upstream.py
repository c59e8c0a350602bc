"""The gateway's HTTP client to the upstream (vLLM's OpenAI-compatible server), on aiohttp.

aiohttp, not httpx: under 16 concurrent calls httpx's connection pool cost the gateway more CPU per call than
everything else it does (``_assign_requests_to_connections`` scans every pooled connection on every request).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time."""


@dataclass
class Answer:
    status: int
    content_type: str | None
    body: bytes


class Upstream:
    def __init__(self, base_url: str, timeout_s: float, max_connections: int):
        self.base_url, self.timeout_s, self.max_connections = base_url.rstrip("/"), timeout_s, max_connections
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                             auto_decompress=True)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        try:
            async with self.session.request(method, self.base_url + path, data=body, headers=headers) as r:
                return Answer(r.status, r.headers.get("content-type"), await r.read())
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(type(e).__name__) from e

    async def stream(self, path: str, body: bytes, headers: dict[str, str]) -> Streamed:
        try:
            r = await self.session.post(self.base_url + path, data=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout_s))
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(type(e).__name__) from e
        return Streamed(r)


class Streamed:
    """An upstream answer read chunk by chunk (SSE); ``close()`` releases the connection."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type")

    async def read(self) -> bytes:
        return await self.response.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError):
            return  # the upstream went away mid-answer: the caller records the stream as incomplete

    def close(self) -> None:
        self.response.release()
