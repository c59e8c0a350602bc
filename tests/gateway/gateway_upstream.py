"""A small OpenAI-compatible upstream for the gateway tests (streaming, tool calls, per-model answers).

The project's replay server (``flywheel/rewards/replay_server.py``) answers only non-streaming chat requests, so
the streaming and tool-call tests run against this one instead: a Starlette app served by a real uvicorn on
127.0.0.1 in a background thread (``ServerThread``), which is also how the tests run the gateway in-process.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ANSWER = '{"intent": "refund", "order_id": "123456"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """``with ServerThread(app) as s: s.url`` — a real uvicorn server on a free port, stopped on exit."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "server did not stop"


def pieces_logprobs(text: str) -> list[dict]:
    """One 'token' per character, spelled as vLLM's ``return_tokens_as_token_ids`` does (its code point)."""
    return [{"token": f"token_id:{ord(c)}", "logprob": -0.25, "bytes": list(c.encode())} for c in text]


class StubUpstream:
    """Answers ``answers[model]`` (default ``ANSWER``); a request with ``tools`` gets a tool call; ``stream`` SSE;
    ``/v1/load_lora_adapter`` calls are recorded in ``loaded``."""

    def __init__(self, answers: dict[str, str] | None = None, latency_s: float = 0.0, fail_models: set | None = None):
        self.answers, self.latency_s = answers or {}, latency_s
        self.chunk_delay_s = 0.0  # between streamed chunks
        self.fail_models = fail_models or set()
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.loaded: list[dict] = []  # bodies of /v1/load_lora_adapter calls (as vLLM takes them)
        self.unloaded: list[dict] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/models", self.models, methods=["GET"]),
                                     Route("/v1/load_lora_adapter", self.load_lora, methods=["POST"]),
                                     Route("/v1/unload_lora_adapter", self.unload_lora, methods=["POST"]),
                                     Route("/health", self.health, methods=["GET"])])

    async def health(self, request: Request) -> Response:
        return Response("")

    async def unload_lora(self, request: Request) -> Response:
        self.unloaded.append(orjson.loads(await request.body()))
        return Response("Success: LoRA adapter unloaded")

    async def load_lora(self, request: Request) -> Response:
        self.loaded.append(orjson.loads(await request.body()))
        return Response("Success: LoRA adapter loaded")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "champion", "object": "model"},
                                                         {"id": "challenger", "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        model = body.get("model", "")
        if model in self.fail_models:
            return JSONResponse({"error": {"message": "scripted failure"}}, 500)
        text = self.answers.get(model, ANSWER)
        tool_calls = None
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            tool_calls = [{"id": "call_1", "type": "function",
                           "function": {"name": name, "arguments": '{"order_id": "123456"}'}}]
            text = None
        logprobs = bool(body.get("logprobs"))
        if body.get("stream"):
            return StreamingResponse(self._sse(model, text, tool_calls, logprobs), media_type="text/event-stream")
        message = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}
        if logprobs and text:
            choice["logprobs"] = {"content": pieces_logprobs(text)}
        return JSONResponse({"id": "cmpl-1", "object": "chat.completion", "model": model, "choices": [choice],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    async def _sse(self, model: str, text: str | None, tool_calls: list | None, logprobs: bool = False):
        def event(delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if logprobs and delta.get("content"):
                choice["logprobs"] = {"content": pieces_logprobs(delta["content"])}
            chunk = {"id": "cmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [choice]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        yield event({"role": "assistant"})
        if tool_calls:
            call = tool_calls[0]
            yield event({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"], "arguments": ""}}]})
            args = call["function"]["arguments"]
            for part in (args[:7], args[7:]):
                yield event({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            yield event({}, "tool_calls")
        else:
            for i in range(0, len(text), 8):
                yield event({"content": text[i:i + 8]})
                await asyncio.sleep(self.chunk_delay_s)
            yield event({}, "stop")
        yield b"data: [DONE]\n\n"
