"""What the gateway writes: interaction-log rows (DESIGN.md section 2) and feedback events, and their checks.

An interaction row is one model call::

    {"request_id", "timestamp", "task", "model_version", "messages", "completion", "latency_ms", "metadata"}

``completion`` is the answer's text; tool calls the model made are appended in the Hermes format the tiny
models and the agent environments use (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), and kept
structured in ``metadata.tool_calls``. ``metadata`` holds the configured ``x-`` headers (never credentials), the
arm, the upstream model, ``stream``, ``finish_reason``, ``usage``, the request's sampling parameters and tools.

A feedback event is ``{"event_id", "request_id", "received_at", "timestamp", <fields>, "kpi": {...}}`` with the
fields of ``FEEDBACK_FIELDS`` that were given; ``check_feedback`` names the bad field of a bad event.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any

import orjson

from flywheel.config.gateway import SECRET_HEADERS

FEEDBACK_KEYS = ("thumbs", "resolved", "escalated", "edited", "comment")
EVENT_KEYS = {"request_id", "timestamp", "kpi", *FEEDBACK_KEYS}
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop", "n",
                 "tool_choice", "response_format")
MAX_ID_CHARS = 256
MAX_COMMENT_CHARS = 8000
MAX_BATCH = 1000


class BadRequest(ValueError):
    """A request the gateway refuses (HTTP 400/422); the message names the bad field."""


def now_iso() -> str:
    """UTC now as ``2026-11-25T14:03:22.123Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_request_id() -> str:
    return "gw-" + uuid.uuid4().hex


def header_metadata(headers, names: list[str]) -> dict[str, str]:
    """The configured headers present in ``headers``, keyed by name without ``x-`` (``x-user-id`` → ``user_id``)."""
    out = {}
    for name in names:
        if name in SECRET_HEADERS:
            continue
        value = headers.get(name)
        if value is not None:
            out[name.removeprefix("x-").replace("-", "_")] = value[:512]
    return out


def check_chat(payload: Any) -> dict:
    """The request body, or ``BadRequest`` naming what is wrong."""
    if not isinstance(payload, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(payload).__name__}")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: expected a non-empty list of chat messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}]: expected an object with a string 'role'")
    return payload


def hermes(tool_calls: list[dict]) -> str:
    """Tool calls as the model wrote them (Hermes/Qwen format), one ``<tool_call>`` block each."""
    blocks = []
    for call in tool_calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            with contextlib.suppress(orjson.JSONDecodeError):  # else kept as the string the model produced
                args = orjson.loads(args) if args.strip() else {}
        blocks.append("<tool_call>\n" + orjson.dumps({"name": fn.get("name"), "arguments": args}).decode()
                      + "\n</tool_call>")
    return "\n".join(blocks)


def completion_text(content: str | None, tool_calls: list[dict] | None) -> str:
    text = content or ""
    if tool_calls:
        text = (text + "\n" if text else "") + hermes(tool_calls)
    return text


def interaction_row(*, request_id: str, timestamp: str, task: str, model_version: str, payload: dict,
                    content: str | None, tool_calls: list[dict] | None, latency_ms: float,
                    metadata: dict) -> dict:
    """One interaction-log row of the model call (DESIGN.md section 2)."""
    meta = dict(metadata)
    for key in SAMPLING_KEYS:
        if key in payload:
            meta.setdefault("params", {})[key] = payload[key]
    if payload.get("tools"):
        meta["tools"] = payload["tools"]
    if tool_calls:
        meta["tool_calls"] = tool_calls
    return {"request_id": request_id, "timestamp": timestamp, "task": task, "model_version": model_version,
            "messages": payload["messages"], "completion": completion_text(content, tool_calls),
            "latency_ms": max(0, int(round(latency_ms))), "metadata": meta}


def token_logprobs(content: list | None) -> dict | None:
    """``choices[0].logprobs.content`` as ``{"tokens", "token_ids"?, "logprobs"}``; vLLM's
    ``return_tokens_as_token_ids`` spells a token ``token_id:123``.

    >>> token_logprobs([{"token": "token_id:17", "logprob": -0.5}, {"token": "token_id:4", "logprob": -1.0}])
    {'tokens': ['token_id:17', 'token_id:4'], 'logprobs': [-0.5, -1.0], 'token_ids': [17, 4]}
    """
    if not content:
        return None
    tokens = [str(t.get("token")) for t in content]
    out = {"tokens": tokens, "logprobs": [t.get("logprob") for t in content]}
    if all(t.startswith("token_id:") and t[9:].lstrip("-").isdigit() for t in tokens):
        out["token_ids"] = [int(t[9:]) for t in tokens]
    return out


class StreamAccumulator:
    """Folds the ``data:`` events of an OpenAI chat stream into content, tool calls, finish reason and usage."""

    def __init__(self) -> None:
        self.buffer = b""
        self.parts: list[str] = []
        self.logprobs: list[dict] = []  # choices[0].logprobs.content entries, in order
        self.tools: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.done = False  # saw ``data: [DONE]``
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bool:
        """Consume bytes; True when this chunk completed the stream (``[DONE]``)."""
        self.buffer += chunk.replace(b"\r", b"")  # SSE allows CRLF; JSON data never holds a raw CR
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())
        return self.done

    def _data(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if "error" in event:
            self.error = str(event["error"])[:500]
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.parts.append(delta["content"])
            if (choice.get("logprobs") or {}).get("content"):
                self.logprobs.extend(choice["logprobs"]["content"])
            for call in delta.get("tool_calls") or []:
                self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _tool_delta(self, call: dict) -> None:
        slot = self.tools.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                           "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            slot["id"] = call["id"]
        fn = call.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            slot["function"]["arguments"] += fn["arguments"]

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def tool_calls(self) -> list[dict] | None:
        return [self.tools[i] for i in sorted(self.tools)] or None


# ---------------------------------------------------------------------------------------------------- feedback
def check_feedback(event: Any, where: str = "body") -> dict:
    """A feedback event as posted, checked field by field; ``BadRequest`` names the first bad one."""
    if not isinstance(event, dict):
        raise BadRequest(f"{where}: expected a JSON object, got {type(event).__name__}")
    unknown = sorted(set(event) - EVENT_KEYS)
    if unknown:
        raise BadRequest(f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(EVENT_KEYS))})")
    rid = event.get("request_id")
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_ID_CHARS:
        raise BadRequest(f"{where}.request_id: expected a string of 1-{MAX_ID_CHARS} characters, got {rid!r}"[:300])
    thumbs = event.get("thumbs")
    if thumbs is not None and (type(thumbs) is not int or thumbs not in (-1, 0, 1)):
        raise BadRequest(f"{where}.thumbs: must be -1, 0 or 1, got {thumbs!r}")
    for name in ("resolved", "escalated", "edited"):
        if event.get(name) is not None and type(event[name]) is not bool:
            raise BadRequest(f"{where}.{name}: must be true or false, got {event[name]!r}")
    comment = event.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise BadRequest(f"{where}.comment: must be a string of at most {MAX_COMMENT_CHARS} characters")
    kpi = event.get("kpi")
    if kpi is not None:
        if not isinstance(kpi, dict):
            raise BadRequest(f"{where}.kpi: expected an object of name -> number or boolean")
        for name, value in kpi.items():
            if not isinstance(value, (int, float, bool)) or value != value:
                raise BadRequest(f"{where}.kpi.{name}: must be a number or a boolean, got {value!r}"[:300])
    ts = event.get("timestamp")
    if ts is not None:
        _check_timestamp(ts, f"{where}.timestamp")
    if not any(event.get(k) is not None for k in (*FEEDBACK_KEYS, "kpi")):
        raise BadRequest(f"{where}: no feedback (give at least one of {', '.join(FEEDBACK_KEYS)}, kpi)")
    return event


def _check_timestamp(ts: Any, where: str) -> None:
    if not isinstance(ts, str):
        raise BadRequest(f"{where}: expected an ISO 8601 string with a timezone")
    try:
        parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{where}: not an ISO 8601 timestamp: {ts!r}"[:300]) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{where}: needs a timezone (e.g. Z), got {ts!r}"[:300])


def feedback_events(body: Any) -> list[dict]:
    """The events of a ``POST /v1/feedback`` body: one event, ``{"events": [...]}`` or a list; all checked first."""
    if isinstance(body, dict) and "events" in body:
        if set(body) != {"events"}:
            raise BadRequest("body: a batch is {\"events\": [...]} and nothing else")
        body, where = body["events"], "events"
    elif isinstance(body, list):
        where = "events"
    else:
        return [check_feedback(body)]
    if not isinstance(body, list) or not body:
        raise BadRequest(f"{where}: expected a non-empty list of feedback events")
    if len(body) > MAX_BATCH:
        raise BadRequest(f"{where}: at most {MAX_BATCH} events per request, got {len(body)}")
    return [check_feedback(e, f"{where}[{i}]") for i, e in enumerate(body)]


def event_row(event: dict, received_at: str) -> dict:
    """The stored form of one checked event: an id, when it arrived, and the event's own time (or arrival)."""
    row = {"event_id": "fb-" + uuid.uuid4().hex, "request_id": event["request_id"], "received_at": received_at,
           "timestamp": event.get("timestamp") or received_at}
    for key in FEEDBACK_KEYS:
        if event.get(key) is not None:
            row[key] = event[key]
    if event.get("kpi"):
        row["kpi"] = event["kpi"]
    return row


def day_of_event(row: dict) -> str:
    """Feedback events are partitioned by the day they arrived."""
    return str(row["received_at"])[:10]
