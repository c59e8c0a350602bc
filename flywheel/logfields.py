"""Checks of single fields of a decoded log record, and the record rebuilt from a raw-snapshot row.

``chat_facts`` reads ``messages``: an OpenAI chat (a list of ``{role, content}`` objects; ``content`` a string, null,
or a list of ``{"type": "text", "text": ...}`` parts), with tool calls in the OpenAI format::

    {"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\\"id\\": 7}"}}]}

``arguments`` is a JSON object, or a string holding one (what the API returns). Anything else is a reason:
``type:messages`` (not a chat), ``type:tool_calls`` (a call without a function name, ``tool_calls`` not a list),
``tool_call:arguments`` (arguments that are not a JSON object), ``nesting_too_deep`` (deeper than ``MAX_NESTING``).
"""
from __future__ import annotations

import orjson

MAX_NESTING = 128   # JSON levels a stored value may have: orjson writes at most 254, and the quarantine nests once more


def too_deep(value, limit: int = MAX_NESTING) -> bool:
    """Whether ``value`` (decoded JSON) nests more than ``limit`` lists/objects; iterative, stops at the limit.

    >>> too_deep({"a": [[1]]}, limit=3), too_deep({"a": [[1]]}, limit=2)
    (False, True)
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            children = item.values()
        elif type(item) is list:
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


def _content_chars(content) -> int | None:
    if type(content) is str:
        return len(content)
    if content is None:
        return 0
    if type(content) is list:   # content parts: [{"type": "text", "text": ...}, ...]
        total = 0
        for part in content:
            text = part.get("text") if type(part) is dict else 0
            if text is not None and type(text) is not str:
                return None
            total += len(text or "")
        return total
    return None


def _call_reason(call) -> str | None:
    """Why one tool call (or legacy ``function_call``) is bad, or None."""
    function = call.get("function", call) if type(call) is dict else None   # function_call has no "function" level
    if type(function) is not dict or type(function.get("name")) is not str or not function["name"]:
        return "type:tool_calls"
    arguments = function.get("arguments")
    if type(arguments) is str:
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return "tool_call:arguments"
    return None if type(arguments) is dict else "tool_call:arguments"


def _message_reason(msg) -> str | None:
    if type(msg) is not dict or type(msg.get("role")) is not str or _content_chars(msg.get("content")) is None:
        return "type:messages"
    calls = msg.get("tool_calls")
    if calls is not None and type(calls) is not list:
        return "type:tool_calls"
    if msg.get("function_call") is not None:
        calls = [*(calls or ()), msg["function_call"]]
    for call in calls or ():
        reason = _call_reason(call)
        if reason:
            return reason
    return None


def chat_facts(value) -> tuple[tuple[bytes, int, int, str] | None, str | None]:
    """((JSON, count, longest content, roles), reason) of a chat: reason None when valid; facts None when not a chat."""
    if type(value) is str:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, "type:messages"
    if type(value) is not list:
        return None, "type:messages"
    if too_deep(value):
        return None, "nesting_too_deep"
    longest, roles, call_reason = 0, set(), None
    for msg in value:
        reason = _message_reason(msg)
        if reason == "type:messages":
            return None, reason
        call_reason = call_reason or reason     # a bad tool call: the chat is still one, its facts are kept
        longest = max(longest, _content_chars(msg.get("content")))
        roles.add(msg["role"])
    return (orjson.dumps(value), len(value), longest, ",".join(sorted(roles))), call_reason


def logged_record(row: dict) -> str:
    """The interaction-log record of a raw-snapshot row that decoded fine (its line is not kept), from its columns."""
    ts = row["timestamp"]
    record = {
        "request_id": row["request_id"], "timestamp": ts.isoformat() if ts is not None else None,
        "task": row["task"], "model_version": row["model_version"],
        "messages": orjson.loads(row["messages"]) if row["messages"] else None, "completion": row["completion"],
        "feedback": {k: row[k] for k in ("thumbs", "resolved", "escalated", "edited", "comment")},
        "latency_ms": row["latency_ms"], "metadata": orjson.loads(row["metadata"]) if row["metadata"] else None,
    }
    return orjson.dumps(record).decode()
