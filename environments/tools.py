"""Tools: plain Python functions over the database, their OpenAI schemas, and the model's tool calls.

Design
------
A tool is an ordinary function whose first parameter is the episode's database (never shown to the model)
and whose other parameters are typed with ``str``, ``int``, ``float``, ``bool``, ``list[...]``, ``Literal[...]``
or ``X | None``; a parameter with a default is optional. The Google-style docstring gives the description
(its first paragraph) and each parameter's description (its ``Args:`` section). ``tool_schema`` turns that
into the OpenAI tool format, so the code is the single source of truth for what the model sees.

The model writes Hermes/Qwen-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks;
``parse_tool_calls`` turns them into OpenAI ``tool_calls`` and keeps malformed blocks as error records.
``call_tool`` validates a call against the signature and runs it; every failure (unknown tool, bad JSON,
missing/extra/ill-typed arguments, a tool that raises) becomes an ``Error: ...`` tool message plus an error
kind, so a bad model output never crashes an episode.
"""
from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Tool = Callable[..., Any]

ERROR_KINDS = ("parse_error", "unknown_tool", "bad_arguments_json", "missing_argument", "extra_argument",
               "wrong_type", "tool_error")

_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_PRIMITIVES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolError(Exception):
    """Raised by a tool to refuse a request (e.g. a policy violation); its message goes back to the model."""


# ---------------------------------------------------------------------------------------------- schemas
def _json_type(annotation: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one type annotation; ``where`` names the parameter in errors."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}
    if origin is Literal:
        kinds = {type(a) for a in args}
        if len(kinds) != 1 or next(iter(kinds)) not in _PRIMITIVES:
            raise TypeError(f"{where}: Literal values must all be one of str/int/float/bool, got {args!r}")
        return {"type": _PRIMITIVES[next(iter(kinds))], "enum": list(args)}
    if origin is list:
        if len(args) != 1:
            raise TypeError(f"{where}: list needs one item type, e.g. list[str]")
        return {"type": "array", "items": _json_type(args[0], where)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _json_type(rest[0], where)
    raise TypeError(f"{where}: unsupported type annotation {annotation!r}")


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section = "description"
    current = None
    for line in lines:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            section = "args"
            continue
        if re.fullmatch(r"[A-Z][A-Za-z ]*:", stripped):  # Returns:, Raises:, ...
            section = "other"
            continue
        if section == "description":
            if not stripped and description:
                section = "after"
            elif stripped:
                description.append(stripped)
        elif section == "args" and stripped:
            match = re.match(r"(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", stripped)
            if match and (line.startswith("    ") and not line.startswith("        ")):
                current = match.group(1)
                params[current] = match.group(2)
            elif current:
                params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(description), params


def _parameters(fn: Tool) -> list[inspect.Parameter]:
    """The model-visible parameters (all but the first, the database)."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"tool {fn.__name__}: the first parameter must be the database")
    return params[1:]


def tool_schema(fn: Tool) -> dict[str, Any]:
    """The OpenAI tool schema of ``fn`` from its type hints and Google-style docstring."""
    hints = typing.get_type_hints(fn)
    description, docs = _docstring_parts(fn.__doc__ or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in _parameters(fn):
        if param.name not in hints:
            raise TypeError(f"tool {fn.__name__}: parameter {param.name!r} has no type hint")
        prop = _json_type(hints[param.name], f"tool {fn.__name__}, parameter {param.name!r}")
        if param.name in docs:
            prop["description"] = docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        else:
            prop["default"] = param.default
        properties[param.name] = prop
    return {"type": "function", "function": {
        "name": fn.__name__, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }}


# ------------------------------------------------------------------------------------------ parsing
@dataclass
class ParsedMessage:
    """The model's output split into text content, well-formed tool calls and malformed blocks."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def parse_tool_calls(text: str, id_prefix: str = "call") -> ParsedMessage:
    """Parse ``<tool_call>`` blocks; a block that is not ``{"name": str, "arguments": object}`` is an error."""
    calls: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for index, match in enumerate(_TOOL_CALL_RE.finditer(text)):
        raw = match.group(1)
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append({"kind": "parse_error", "raw": raw, "error": f"invalid JSON in <tool_call>: {exc}"})
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            errors.append({"kind": "parse_error", "raw": raw, "error": "<tool_call> needs a string 'name'"})
            continue
        arguments = payload.get("arguments", {})
        if isinstance(arguments, str):  # some models already encode the arguments
            arguments_json = arguments
        else:
            arguments_json = json.dumps(arguments, ensure_ascii=False)
        calls.append({"id": f"{id_prefix}_{index}", "type": "function",
                      "function": {"name": payload["name"], "arguments": arguments_json}})
    content = _TOOL_CALL_RE.sub("", text).strip()
    return ParsedMessage(content=content, tool_calls=calls, errors=errors)


def assistant_text(message: dict[str, Any]) -> str:
    """What a model writes for an OpenAI assistant message: its content, then one ``<tool_call>`` block per call
    (``{"name": ..., "arguments": ...}`` with the arguments' JSON string verbatim), joined by newlines; the
    Hermes format ``parse_tool_calls`` reads back, and the one the tiny model's chat template renders.

    >>> assistant_text({"role": "assistant", "content": "", "tool_calls": [
    ...     {"function": {"name": "get_order", "arguments": '{"order_id": "123456"}'}}]})
    '<tool_call>{"name": "get_order", "arguments": {"order_id": "123456"}}</tool_call>'
    """
    parts = [message["content"]] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        arguments = call["function"].get("arguments") or "{}"
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        parts.append(f'<tool_call>{{"name": {json.dumps(call["function"]["name"])}, "arguments": {arguments}}}'
                     "</tool_call>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- execution
def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON-decoded value fits the annotation (ints are accepted for floats, bools never for ints)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    return False


def _validate(fn: Tool, arguments: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, message) of the first problem with the arguments, or None."""
    hints = typing.get_type_hints(fn)
    params = {p.name: p for p in _parameters(fn)}
    extra = sorted(set(arguments) - set(params))
    if extra:
        return "extra_argument", f"{fn.__name__} got unexpected argument(s) {extra}; it takes {sorted(params)}"
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in arguments]
    if missing:
        return "missing_argument", f"{fn.__name__} is missing required argument(s) {missing}"
    for name, value in arguments.items():
        if not _matches(value, hints[name]):
            expected = _json_type(hints[name], name)
            return "wrong_type", f"{fn.__name__} argument {name!r} must be {json.dumps(expected)}, got {value!r}"
    return None


def _error(call_id: str, message: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": f"Error: {message}"}


def call_tool(tools: dict[str, Tool], db: Any, call: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Run one OpenAI tool call; return the ``tool`` message and the error kind (None on success)."""
    call_id = call.get("id", "")
    function = call.get("function", {})
    name = function.get("name")
    if name not in tools:
        return _error(call_id, f"unknown tool {name!r}; available tools: {sorted(tools)}"), "unknown_tool"
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError as exc:
        return _error(call_id, f"arguments of {name} are not valid JSON: {exc}"), "bad_arguments_json"
    if not isinstance(arguments, dict):
        return _error(call_id, f"arguments of {name} must be a JSON object"), "bad_arguments_json"
    problem = _validate(tools[name], arguments)
    if problem:
        return _error(call_id, problem[1]), problem[0]
    try:
        result = tools[name](db, **arguments)
    except ToolError as exc:  # a refusal the tool meant the model to read
        return _error(call_id, str(exc)), "tool_error"
    except Exception as exc:  # a tool that crashes must not end the episode
        return _error(call_id, f"{name} failed: {type(exc).__name__}: {exc}"), "tool_error"
    content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, sort_keys=True)
    return {"role": "tool", "tool_call_id": call_id, "content": content}, None
