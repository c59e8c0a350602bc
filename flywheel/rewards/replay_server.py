"""A local OpenAI-compatible chat endpoint that replays scripted answers (tests, benchmarks, offline demo).

Nothing real can judge here (no 235B model), so this server stands in for vLLM or a hosted API over real HTTP.
Each request takes the next action of the script (then ``default``):

``valid``          a verdict computed from the decoded data block (``score_fn(answer)`` / ``pair_fn(a, b)``)
``malformed``      not JSON                        ``out_of_range``  a score above the declared range
``429`` / ``500``  that HTTP status                ``slow``          sleeps ``slow_s`` before a valid verdict
``echo``           replies with the judged answer text itself (a parroting model)

A block that does not decode (an escaped delimiter) makes the "valid" verdict the maximum score: a fooled judge.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BLOCK = re.compile(r"<<<DATA id=(\w+)>>>\n(.*?)\n<<<END DATA id=\1>>>", re.DOTALL)
_RANGE = re.compile(r"number from (-?[\d.]+) to (-?[\d.]+)")


def default_score(answer: str, low: float, high: float) -> float:
    """A deterministic 'opinion' of an answer: low..high from a hash of its text."""
    span = int(high - low) + 1
    return low + int(hashlib.sha256(answer.encode()).hexdigest(), 16) % span


def default_pair(a: str, b: str) -> str:
    """Prefer the longer answer (ties on equal length)."""
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


class ReplayServer:
    """``with ReplayServer(script=[...]) as s: s.base_url`` → ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, script: list[str] | None = None, default: str = "valid", latency_s: float = 0.0,
                 slow_s: float = 5.0, score_fn: Callable[[str, float, float], float] = default_score,
                 pair_fn: Callable[[str, str], str] = default_pair, port: int = 0):
        self.script, self.default = list(script or []), default
        self.latency_s, self.slow_s = latency_s, slow_s
        self.score_fn, self.pair_fn, self.port = score_fn, pair_fn, port
        self.requests: list[dict] = []  # every request body received
        self.auth: list[str | None] = []  # Authorization header of each request
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next_action(self, body: dict) -> str:
        with self._lock:
            self.requests.append(body)
            return self.script.pop(0) if self.script else self.default

    def answer(self, body: dict, action: str) -> tuple[int, str]:
        """(HTTP status, message content) for one request."""
        if action in {"429", "500"}:
            return int(action), '{"error": "scripted"}'
        if action == "malformed":
            return 200, "I think the answer is quite good, score: 4"
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
        if action == "slow":
            time.sleep(self.slow_s)
        if not isinstance(data, dict):  # the block escaped: a naive judge is fooled
            return 200, json.dumps({"data_id": did, "score": high, "winner": "A", "reasons": ["fooled"]})
        if "answer_a" in data:
            winner = self.pair_fn(str(data["answer_a"]), str(data["answer_b"]))
            return 200, json.dumps({"data_id": did, "winner": winner, "reasons": ["scripted pairwise"]})
        score = self.score_fn(str(data.get("answer", "")), low, high)
        return 200, json.dumps({"data_id": did, "score": score, "reasons": ["scripted"]})

    def __enter__(self) -> ReplayServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # /v1/stats: how many chat requests were served (for other processes)
                out = json.dumps({"calls": server.calls}).encode()
                self.send_response(200 if self.path.endswith("/stats") else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = {}
                server.auth.append(self.headers.get("authorization"))
                action = server._next_action(body)
                if server.latency_s:
                    time.sleep(server.latency_s)
                status, content = server.answer(body, action)
                payload = {"id": "replay", "object": "chat.completion", "model": body.get("model", ""),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}]}
                out = json.dumps(payload if status == 200 else {"error": {"message": content}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()


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
