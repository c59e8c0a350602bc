"""The capture gateway: an OpenAI-compatible ASGI app (Starlette) in front of the vLLM server.

Routes:
- ``POST /v1/chat/completions``: streaming (SSE passed through chunk by chunk) and not; tool calls pass through.
  The call is routed to the champion or (a sticky share of keys) the challenger, answered, and written as one
  interaction-log row to the write-ahead log *before* the answer (non-streaming) or the final ``data: [DONE]``
  (streaming) leaves; the answer carries the receipt ``x-request-id``. In shadow mode the challenger answers the
  same request afterwards, off the request path, and only its row is kept (``metadata.shadow_of``).
- ``POST /v1/feedback``: one event ``{request_id, thumbs?, resolved?, escalated?, edited?, comment?, kpi?,
  timestamp?}``, a list, or ``{"events": [...]}``; every event is checked before any is accepted (422 names the bad
  field); accepted events go to their own WAL and ``_feedback/dt=YYYY-MM-DD/`` partitions.
- ``GET /v1/models`` (the upstream's list), ``GET /metrics`` (Prometheus text), ``GET /health``.

The upstream's Authorization is ``gateway.upstream_api_key`` or the client's header, forwarded and never logged.
When the WAL cannot be written (disk full) the answer still goes out, without a receipt, and
``flywheel_gateway_capture_failures_total`` counts it.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from functools import partial

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel.gateway.routing import CHALLENGER, CHAMPION, routing_key
from flywheel.gateway.rows import (
    BadRequest,
    StreamAccumulator,
    check_chat,
    event_row,
    feedback_events,
    header_metadata,
    interaction_row,
    new_request_id,
    now_iso,
    token_logprobs,
)
from flywheel.gateway.state import FEEDBACK_PREFIX, Gateway, build_gateway
from flywheel.gateway.upstream import Upstream, UpstreamError


def create_app(cfg, *, monitor=None) -> Starlette:
    """The ASGI app (started and stopped by its lifespan: uvicorn runs it)."""
    state = build_gateway(cfg, monitor)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        gw = state.gw
        state.client = Upstream(gw.upstream_url, gw.upstream_timeout_s, gw.max_connections)
        await state.client.open()
        await run_in_threadpool(state.aliases.refresh)
        state.router.challenger_live = state.aliases.challenger_live
        state.aliases.start(gw.routing.registry_refresh_s)
        state.capture.start()
        state.feedback.start()
        if state.monitor is not None:
            state.monitor.start()
        try:
            yield
        finally:
            if state.monitor is not None:
                state.monitor.stop()
            state.aliases.stop()
            if state._tasks:
                await asyncio.wait(list(state._tasks), timeout=gw.upstream_timeout_s)
            await state.client.close()
            await run_in_threadpool(state.capture.close)  # SIGTERM: everything accepted reaches the sink
            await run_in_threadpool(state.feedback.close)

    routes = [
        Route("/v1/chat/completions", partial(chat, state), methods=["POST"]),
        Route("/v1/feedback", partial(feedback, state), methods=["POST"]),
        Route("/v1/models", partial(models, state), methods=["GET"]),
        Route("/metrics", partial(metrics, state), methods=["GET"]),
        Route("/health", partial(health, state), methods=["GET"]),
    ]
    return GatewayApp(state, Starlette(routes=routes, lifespan=lifespan))


class GatewayApp:
    """The ASGI app: ``POST /v1/chat/completions`` straight to its handler (the hot path: Starlette's router and
    middleware stack cost about 1 ms per call on this machine), everything else (and the lifespan) through Starlette.
    """

    def __init__(self, gateway: Gateway, starlette: Starlette):
        self.gateway, self.starlette = gateway, starlette

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            response = await chat(self.gateway, Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.starlette(scope, receive, send)


def _error(status: int, message: str, request_id: str | None = None) -> JSONResponse:
    headers = {"x-request-id": request_id} if request_id else None
    return JSONResponse({"error": {"message": message, "type": "gateway_error"}}, status, headers=headers)


async def chat(state: Gateway, request: Request) -> Response:
    start = time.perf_counter()
    request_id = new_request_id()
    try:
        payload = check_chat(orjson.loads(await request.body()))
    except orjson.JSONDecodeError:
        return _error(400, "body: not valid JSON")
    except BadRequest as e:
        return _error(400, str(e))
    key = routing_key(request.headers, state.gw.routing.key_headers, request_id)
    state.router.challenger_live = state.aliases.challenger_live
    arm = state.router.arm(key)
    meta = header_metadata(request.headers, state.gw.capture.metadata_headers)
    meta.update(arm=arm, upstream_model=state.upstream_model(arm), stream=bool(payload.get("stream")))
    if request.headers.get("x-request-id"):
        meta["client_request_id"] = request.headers["x-request-id"][:256]
    context = (request_id, now_iso(), state.task_of(request), start)
    if payload.get("stream"):
        response = await _stream(state, request, payload, arm, meta, context)
    else:
        response = await _complete(state, request, payload, arm, meta, context)
    if state.router.shadow(key) and response.status_code == 200:
        task = asyncio.create_task(_shadow(state, request, payload, meta, context))
        state._tasks.add(task)
        task.add_done_callback(state._tasks.discard)
    return response


def _upstream_body(state: Gateway, payload: dict, arm: str) -> bytes:
    body = {**payload, "model": state.upstream_model(arm)}
    if state.gw.capture.logprobs:  # the sampled tokens, as ids (vLLM), for off-policy corrections later
        body["logprobs"], body["return_tokens_as_token_ids"] = True, True
    return orjson.dumps(body)


async def _complete(state: Gateway, request: Request, payload: dict, arm: str, meta: dict, context) -> Response:
    request_id, timestamp, task, start = context
    try:
        r = await state.client.request("POST", "/chat/completions", _upstream_body(state, payload, arm),
                                       state.upstream_headers(request))
    except UpstreamError as e:
        state.answered(arm, 502, (time.perf_counter() - start) * 1000, None)
        return _error(502, f"upstream unavailable: {e}")
    latency_ms = (time.perf_counter() - start) * 1000
    if r.status != 200:
        state.answered(arm, r.status, latency_ms, None)
        return Response(r.body, r.status, media_type=r.content_type)
    try:
        data = orjson.loads(r.body)
        choice = (data.get("choices") or [{}])[0]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        state.answered(arm, 502, latency_ms, None)
        return _error(502, "upstream answered 200 with a body that is not a chat completion")
    message = choice.get("message") or {}
    meta = {**meta, "finish_reason": choice.get("finish_reason")}
    if data.get("usage"):
        meta["usage"] = data["usage"]
    body = r.body
    if state.gw.capture.logprobs:
        sampled = token_logprobs((choice.get("logprobs") or {}).get("content"))
        if sampled:
            meta["logprobs"] = sampled
        if not payload.get("logprobs"):  # the client did not ask for them
            for c in data.get("choices") or []:
                c.pop("logprobs", None)
            body = orjson.dumps(data)
    row = interaction_row(request_id=request_id, timestamp=timestamp, task=task,
                          model_version=state.aliases.label(arm), payload=payload, content=message.get("content"),
                          tool_calls=message.get("tool_calls"), latency_ms=latency_ms, metadata=meta)
    accepted = state.accept(row)
    state.answered(arm, 200, latency_ms, request_id if accepted else None, row)
    headers = {"x-request-id": request_id} if accepted else None
    return Response(body, 200, media_type="application/json", headers=headers)


async def _stream(state: Gateway, request: Request, payload: dict, arm: str, meta: dict, context) -> Response:
    request_id, timestamp, task, start = context
    try:
        r = await state.client.stream("/chat/completions", _upstream_body(state, payload, arm),
                                      state.upstream_headers(request))
    except UpstreamError as e:
        state.answered(arm, 502, (time.perf_counter() - start) * 1000, None)
        return _error(502, f"upstream unavailable: {e}")
    if r.status != 200:
        content = await r.read()
        r.close()
        state.answered(arm, r.status, (time.perf_counter() - start) * 1000, None)
        return Response(content, r.status, media_type=r.content_type)
    acc = StreamAccumulator()

    def capture(incomplete: bool) -> None:
        latency_ms = (time.perf_counter() - start) * 1000
        extra = {"finish_reason": acc.finish_reason, **({"usage": acc.usage} if acc.usage else {})}
        if acc.logprobs:
            extra["logprobs"] = token_logprobs(acc.logprobs)
        if incomplete:
            extra["stream_incomplete"] = True
        row = interaction_row(request_id=request_id, timestamp=timestamp, task=task,
                              model_version=state.aliases.label(arm), payload=payload, content=acc.content,
                              tool_calls=acc.tool_calls, latency_ms=latency_ms, metadata={**meta, **extra})
        accepted = state.accept(row)
        state.answered(arm, 200, latency_ms, request_id if accepted else None, row)

    async def relay():
        captured = False
        try:
            async for chunk in r.chunks():
                if acc.feed(chunk) and not captured:
                    capture(incomplete=False)  # in the WAL before [DONE] reaches the client
                    captured = True
                yield chunk
        finally:
            r.close()
            if not captured and (acc.parts or acc.tools):
                capture(incomplete=True)  # the client or the upstream went away mid-answer

    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={"x-request-id": request_id, "cache-control": "no-cache"})


async def _shadow(state: Gateway, request: Request, payload: dict, meta: dict, context) -> None:
    """The challenger's answer to a request the champion answered: logged (``metadata.shadow_of``), never shown."""
    request_id, _, task, _ = context
    start = time.perf_counter()
    body = {**payload, "stream": False}
    body.pop("stream_options", None)
    try:
        r = await state.client.request("POST", "/chat/completions", _upstream_body(state, body, CHALLENGER),
                                       state.upstream_headers(request))
    except UpstreamError:
        state.answered(CHALLENGER, 502, (time.perf_counter() - start) * 1000, None)
        return
    latency_ms = (time.perf_counter() - start) * 1000
    state.metrics.shadow_requests += 1
    if r.status != 200:
        state.answered(CHALLENGER, r.status, latency_ms, None)
        return
    try:
        data = orjson.loads(r.body)
        message = (data.get("choices") or [{}])[0].get("message") or {}
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        state.answered(CHALLENGER, 502, latency_ms, None)
        return
    shadow_meta = {**meta, "arm": CHALLENGER, "upstream_model": state.upstream_model(CHALLENGER), "stream": False,
                   "shadow": True, "shadow_of": request_id}
    sampled = token_logprobs(((data.get("choices") or [{}])[0].get("logprobs") or {}).get("content"))
    if sampled:
        shadow_meta["logprobs"] = sampled
    row = interaction_row(request_id=f"{request_id}-shadow", timestamp=now_iso(), task=task,
                          model_version=state.aliases.label(CHALLENGER), payload=body,
                          content=message.get("content"), tool_calls=message.get("tool_calls"),
                          latency_ms=latency_ms, metadata=shadow_meta)
    state.accept(row)
    state.answered(CHALLENGER, 200, latency_ms, None, row)


async def feedback(state: Gateway, request: Request) -> Response:
    try:
        events = feedback_events(orjson.loads(await request.body()))
    except orjson.JSONDecodeError:
        return _error(400, "body: not valid JSON")
    except BadRequest as e:
        return _error(422, str(e))
    received = now_iso()
    rows = [event_row(e, received) for e in events]
    try:
        for row in rows:
            state.feedback.append(row)
    except OSError as e:
        return _error(503, f"feedback not stored: {type(e).__name__}")
    state.metrics.feedback_events += len(rows)
    if state.monitor is not None:
        for row in rows:
            state.monitor.record_feedback(row)
    return JSONResponse({"accepted": len(rows), "event_ids": [r["event_id"] for r in rows]})


async def models(state: Gateway, request: Request) -> Response:
    try:
        r = await state.client.request("GET", "/models", None, state.upstream_headers(request))
    except UpstreamError as e:
        return _error(502, f"upstream unavailable: {e}")
    return Response(r.body, r.status, media_type=r.content_type)


async def metrics(state: Gateway, request: Request) -> Response:
    text = state.metrics.render({"interactions": state.capture, "feedback": state.feedback})
    text += ("# TYPE flywheel_gateway_capture_failures_total counter\n"
             f"flywheel_gateway_capture_failures_total {state.capture_failures}\n")
    if state.monitor is not None:
        text += state.monitor.render_metrics()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def health(state: Gateway, request: Request) -> Response:
    return JSONResponse({"status": "ok", "capture_lag_s": round(state.capture.lag_seconds(), 3),
                         "rows_accepted": state.capture.stats.rows_accepted,
                         "rows_written": state.capture.stats.rows_written,
                         "versions": state.aliases.versions, "registry_error": state.aliases.error,
                         "routing": {"mode": state.router.mode, "share": state.router.share,
                                     "challenger_live": state.aliases.challenger_live}})


__all__ = ["CHAMPION", "CHALLENGER", "FEEDBACK_PREFIX", "Gateway", "GatewayApp", "build_gateway", "create_app"]
