"""Tool schemas come from type hints and docstrings; tool calls parse and validate without ever crashing."""
import json
from typing import Literal

import pytest

from environments.db import MockDatabase
from environments.tools import ToolError, call_tool, parse_tool_calls, tool_schema


def search(db, query: str, limit: int = 5, scale: float = 1.0, exact: bool = False,
           tags: list[str] | None = None, mode: Literal["fast", "slow"] = "fast") -> list:
    """Search the catalogue for products.

    A longer explanation that is not part of the description.

    Args:
        query: What to look for,
            over two lines.
        limit: How many results.
        mode: Fast or slow search.

    Returns:
        The matches.
    """
    return [query] * limit


def explode(db, order_id: str) -> str:
    """Always fails.

    Args:
        order_id: Any id.
    """
    raise KeyError("boom")


def refuse(db, order_id: str) -> str:
    """Refuses by policy."""
    raise ToolError(f"order {order_id} is not allowed")


TOOLS = {"search": search, "explode": explode, "refuse": refuse}


def _call(name, arguments):
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": raw}}


def test_schema_from_hints_and_docstring():
    schema = tool_schema(search)
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the catalogue for products."
    params = fn["parameters"]
    assert params["required"] == ["query"]
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "What to look for, over two lines."}
    assert props["limit"] == {"type": "integer", "description": "How many results.", "default": 5}
    assert props["scale"] == {"type": "number", "default": 1.0}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "default": None}
    assert props["mode"]["enum"] == ["fast", "slow"] and props["mode"]["type"] == "string"
    assert "db" not in props


def test_schema_rejects_unhinted_and_unsupported_parameters():
    def no_hint(db, x):
        """No hint."""

    def bad_type(db, x: dict):
        """Unsupported."""

    with pytest.raises(TypeError, match="'x' has no type hint"):
        tool_schema(no_hint)
    with pytest.raises(TypeError, match="parameter 'x'"):
        tool_schema(bad_type)


def test_parse_several_calls_and_keep_the_text():
    text = ('Let me check. <tool_call>{"name": "search", "arguments": {"query": "lamp"}}</tool_call>\n'
            '<tool_call>\n{"name": "refuse", "arguments": {"order_id": "1"}}\n</tool_call> Done.')
    parsed = parse_tool_calls(text)
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["search", "refuse"]
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"query": "lamp"}
    assert parsed.tool_calls[0]["id"] != parsed.tool_calls[1]["id"]
    assert parsed.tool_calls[0]["type"] == "function"
    assert parsed.content == "Let me check. \n Done."
    assert parsed.errors == []


def test_malformed_block_is_an_error_record_not_an_exception():
    text = '<tool_call>{"name": "search", "arguments": {"query": </tool_call><tool_call>[1]</tool_call>'
    parsed = parse_tool_calls(text)
    assert parsed.tool_calls == []
    assert [e["kind"] for e in parsed.errors] == ["parse_error", "parse_error"]
    assert "invalid JSON" in parsed.errors[0]["error"]
    assert "string 'name'" in parsed.errors[1]["error"]


def test_a_valid_call_runs_and_returns_json():
    message, error = call_tool(TOOLS, None, _call("search", {"query": "x", "limit": 2}))
    assert error is None
    assert message == {"role": "tool", "tool_call_id": "c1", "content": '["x", "x"]'}


@pytest.mark.parametrize("call, kind, fragment", [
    (_call("nope", {}), "unknown_tool", "unknown tool 'nope'"),
    (_call("search", '{"query": '), "bad_arguments_json", "not valid JSON"),
    (_call("search", "[1, 2]"), "bad_arguments_json", "must be a JSON object"),
    (_call("search", {}), "missing_argument", "['query']"),
    (_call("search", {"query": "x", "colour": "red"}), "extra_argument", "['colour']"),
    (_call("search", {"query": 3}), "wrong_type", "argument 'query'"),
    (_call("search", {"query": "x", "limit": "5"}), "wrong_type", "argument 'limit'"),
    (_call("search", {"query": "x", "limit": True}), "wrong_type", "argument 'limit'"),
    (_call("search", {"query": "x", "mode": "medium"}), "wrong_type", "argument 'mode'"),
    (_call("search", {"query": "x", "tags": ["a", 1]}), "wrong_type", "argument 'tags'"),
    (_call("explode", {"order_id": "1"}), "tool_error", "explode failed: KeyError: 'boom'"),
    (_call("refuse", {"order_id": "7"}), "tool_error", "order 7 is not allowed"),
])
def test_every_bad_call_is_an_error_message_with_a_kind(call, kind, fragment):
    message, error = call_tool(TOOLS, None, call)
    assert error == kind
    assert message["role"] == "tool" and message["tool_call_id"] == "c1"
    assert message["content"].startswith("Error: ") and fragment in message["content"]


def test_optional_and_numeric_arguments_are_accepted():
    _, error = call_tool(TOOLS, None, _call("search", {"query": "x", "scale": 2, "tags": None, "mode": "slow"}))
    assert error is None


def test_a_tool_over_a_real_database():
    db = MockDatabase.from_fixture({"items": [{"id": 1, "name": "lamp"}]})

    def find(db, name: str) -> list:
        """Find items."""
        return db.query("SELECT id FROM items WHERE name = ?", (name,))

    message, error = call_tool({"find": find}, db, _call("find", {"name": "lamp"}))
    assert error is None and json.loads(message["content"]) == [{"id": 1}]


def test_every_acme_tool_documents_every_parameter():
    from environments.acme_shop.tools import TOOLS

    for fn in TOOLS:
        function = tool_schema(fn)["function"]
        assert function["description"], fn.__name__
        props = function["parameters"]["properties"]
        assert props and all(p.get("description") for p in props.values()), fn.__name__
    schema = tool_schema(TOOLS[2])["function"]["parameters"]  # list_orders: status is optional
    assert schema["required"] == ["customer_id"] and "refunded" in schema["properties"]["status"]["enum"]
