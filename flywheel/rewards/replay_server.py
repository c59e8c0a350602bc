"""A local OpenAI-compatible chat endpoint that replays scripted answers (tests, benchmarks, offline demo).

Nothing real can judge here (no 235B model), so this server stands in for vLLM or a hosted API over real HTTP.
Each request takes the next action of the script (then ``default``):

``valid``          a verdict computed from the decoded data block (``score_fn(answer)`` / ``pair_fn(a, b)``)
``malformed``      not JSON                        ``out_of_range``  a score above the declared range
``429``, ``500``…  that HTTP status                ``slow``          sleeps ``slow_s`` before a valid verdict
``echo``           replies with the judged answer text itself (a parroting model)
``score:<JSON>``   a verdict with the right ``data_id`` and that literal score (``score:11``, ``score:NaN``,
                   ``score:"7"``): what an out-of-range or mistyped score does
``content:<text>`` that message content, verbatim (garbage verdicts)
``body:<text>``    HTTP 200 whose whole body is that text (not a chat completion: a proxy's error page)
``hang``           never answers (until the server stops): a judge that died mid-request

A block that does not decode (an escaped delimiter) makes the "valid" verdict the maximum score: a fooled judge.

One asyncio event loop (on a background thread) serves every connection with HTTP/1.1 keep-alive: the scripted
``latency_s`` is an ``asyncio.sleep``, so 16 or 160 requests in flight cost no thread each and hold no lock, and a
response goes out in one write. The verdict itself (``answer``) is computed on the loop in microseconds; the
``slow`` action and a replaced ``answer`` (a test's blocking hook) run on a worker thread, so they never stall the
other requests. Every answer carries ``usage`` (prompt and completion tokens, characters / 4) unless
``usage=False``; ``received`` holds the ``time.monotonic()`` at which each chat request arrived.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

_BLOCK = re.compile(r"<<<DATA id=(\w+)>>>\n(.*?)\n<<<END DATA id=\1>>>", re.DOTALL)
_RANGE = re.compile(r"number from (-?[\d.]+) to (-?[\d.]+)")
_MAX_HEADER = 64 * 1024


def default_score(answer: str, low: float, high: float) -> float:
    """A deterministic 'opinion' of an answer: low..high from a hash of its text."""
    span = int(high - low) + 1
    return low + int(hashlib.sha256(answer.encode()).hexdigest(), 16) % span


def default_pair(a: str, b: str) -> str:
    """Prefer the longer answer (ties on equal length)."""
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


def count_tokens(text: str) -> int:
    """The replay 'tokenizer': characters / 4, at least 1 for a non-empty text."""
    return (len(text) + 3) // 4


class ReplayServer:
    """``with ReplayServer(script=[...]) as s: s.base_url`` → ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, script: list[str] | None = None, default: str = "valid", latency_s: float = 0.0,
                 slow_s: float = 5.0, score_fn: Callable[[str, float, float], float] = default_score,
                 pair_fn: Callable[[str, str], str] = default_pair, port: int = 0, usage: bool = True):
        self.script, self.default = list(script or []), default
        self.latency_s, self.slow_s = latency_s, slow_s
        self.score_fn, self.pair_fn, self.port, self.usage = score_fn, pair_fn, port, usage
        self.requests: list[dict] = []  # every request body received
        self.auth: list[str | None] = []  # Authorization header of each request
        self.received: list[float] = []  # time.monotonic() at which each chat request arrived
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()  # one per connection, cancelled when the server stops
        self._address: tuple[str, int] | None = None

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next_action(self, body: dict) -> str:
        with self._lock:
            self.requests.append(body)
            return self.script.pop(0) if self.script else self.default

    def answer(self, body: dict, action: str) -> tuple[int, str]:
        """(HTTP status, message content) for one request."""
        if action.isdigit():  # "429", "500", "401"...: that HTTP status
            return int(action), '{"error": "scripted"}'
        if action == "malformed":
            return 200, "I think the answer is quite good, score: 4"
        if action.startswith(("content:", "body:")):
            return 200, action.split(":", 1)[1]
        messages = body.get("messages") or [{}]
        system, user = messages[0].get("content", ""), messages[-1].get("content", "")
        first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), user)
        m = _BLOCK.search(first_user)
        rng = _RANGE.search(system)
        low, high = (float(rng.group(1)), float(rng.group(2))) if rng else (1.0, 5.0)
        did = m.group(1) if m else ""
        try:
            data = json.loads(m.group(2)) if m else None
        except json.JSONDecodeError:
            data = None
        if action == "echo":
            text = "" if not isinstance(data, dict) else data.get("answer", data.get("answer_a", ""))
            return 200, text
        if action == "out_of_range":
            return 200, json.dumps({"data_id": did, "score": high + 10, "reasons": ["scripted out of range"]})
        if action.startswith("score:"):
            return 200, f'{{"data_id": {json.dumps(did)}, "score": {action[6:]}, "reasons": ["scripted score"]}}'
        if action == "slow":
            time.sleep(self.slow_s)
        if not isinstance(data, dict):  # the block escaped: a naive judge is fooled
            return 200, json.dumps({"data_id": did, "score": high, "winner": "A", "reasons": ["fooled"]})
        if "answer_a" in data:
            winner = self.pair_fn(str(data["answer_a"]), str(data["answer_b"]))
            return 200, json.dumps({"data_id": did, "winner": winner, "reasons": ["scripted pairwise"]})
        score = self.score_fn(str(data.get("answer", "")), low, high)
        return 200, json.dumps({"data_id": did, "score": score, "reasons": ["scripted"]})

    # ------------------------------------------------------------------------------------------ HTTP
    def _completion(self, body: dict, status: int, content: str) -> dict:
        if status != 200:
            return {"error": {"message": content}}
        payload = {"id": "replay", "object": "chat.completion", "model": body.get("model", ""),
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content}}]}
        if self.usage:
            prompt = sum(count_tokens(str(m.get("content") or "")) for m in body.get("messages") or []
                         if isinstance(m, dict))
            done = count_tokens(content)
            payload["usage"] = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
        return payload

    async def _chat(self, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        self.received.append(time.monotonic())
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {}
        body = body if isinstance(body, dict) else {}
        self.auth.append(headers.get("authorization"))
        action = self._next_action(body)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if action == "hang":
            await asyncio.Event().wait()  # cancelled when the server stops
        if action.startswith("body:"):
            return 200, action[5:].encode()
        if action == "slow" or "answer" in self.__dict__:  # may block: a worker thread, never the loop
            status, content = await asyncio.get_running_loop().run_in_executor(self._workers, self.answer, body,
                                                                               action)
        else:
            status, content = self.answer(body, action)
        return status, json.dumps(self._completion(body, status, content)).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after another (keep-alive) until the client closes it."""
        self._conns.add(writer)
        self._handlers.add(asyncio.current_task())
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, raw = request
                if method == "POST":
                    status, out = await self._chat(raw, headers)
                elif method == "GET":  # /v1/stats: how many chat requests were served (for other processes)
                    status, out = (200 if path.endswith("/stats") else 404), json.dumps({"calls": self.calls}).encode()
                else:
                    status, out = 405, b'{"error": {"message": "method not allowed"}}'
                close = headers.get("connection", "").lower() == "close"
                head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
                        f"content-length: {len(out)}"] + (["connection: close"] if close else [])
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + out)  # one write: one segment
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away (timed out) or sent garbage: drop the connection
        finally:
            self._conns.discard(writer)
            self._handlers.discard(asyncio.current_task())
            writer.close()

    def __enter__(self) -> ReplayServer:
        started = threading.Event()
        self._workers = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="replay-answer")
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=512,
                                                      limit=_MAX_HEADER)
            self._address = self._server.sockets[0].getsockname()[:2]

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="replay-server", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    @property
    def base_url(self) -> str:
        assert self._address is not None, "server not started"
        return f"http://127.0.0.1:{self._address[1]}/v1"

    def __exit__(self, *exc) -> None:
        if not (self._loop and self._server):
            return

        async def stop() -> None:
            self._server.close()
            handlers = list(self._handlers)  # those waiting for a slow answer or hanging
            for t in handlers:
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            for w in list(self._conns):
                w.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._server = None


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """(method, path, lower-cased headers, body) of the next request; None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")  # the end of the (empty) trailer
        raw = b"".join(chunks)
    else:
        raw = await reader.readexactly(int(headers.get("content-length") or 0))
    return method, path, headers, raw


def main() -> None:
    """``python -m flywheel.rewards.replay_server --port 0 --latency-ms 50``: prints the base URL, serves until "
      "killed."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Local OpenAI-compatible judge replaying scripted verdicts.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--default", default="valid", help="action for every request (valid, malformed, echo, 500...)")
    args = ap.parse_args()
    with ReplayServer(default=args.default, latency_s=args.latency_ms / 1000, port=args.port) as server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
