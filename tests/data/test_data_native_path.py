"""The native parse path (Arrow's JSON reader behind a msgspec screen, ``flywheel.logparse_native``) gives the same
raw rows, clean rows and quarantine records as the exact per-line path, line for line; the lines it is unsure of
go to the exact path, and the well-formed lines around them stay on the native path."""
import json

import orjson
import pytest
from test_data_fastpath import corrupted_log, ingest

from flywheel import logparse, logparse_native
from flywheel.logparse_native import native_tables

DAY = "2026-11-01"
GOOD = {"request_id": "r", "timestamp": "2026-11-01T10:00:00Z", "task": "t", "model_version": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "completion": "ok", "feedback": {"thumbs": 1, "resolved": True, "escalated": False, "edited": None,
                                         "comment": None}, "latency_ms": 12, "metadata": {"channel": "web"}}


def good(i: int, **changes) -> bytes:
    return orjson.dumps({**GOOD, "request_id": f"good-{i}", **changes})


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


ODD_LINES = {   # every shape the native path must either parse exactly or hand to the exact path
    "flat_feedback": good(0, feedback=None, thumbs=-1, resolved=True),
    "flat_and_nested_feedback": good(0, thumbs=5),
    "tool_calls": good(0, messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}]),
    "bad_tool_call": good(0, messages=[{"role": "assistant", "content": None, "tool_calls": [{"function": {}}]}]),
    "message_name": good(0, messages=[{"role": "user", "name": "bo", "content": "x"}]),
    "message_extra_null": good(0, messages=[{"role": "user", "content": "x", "name": None}]),
    "content_parts": good(0, messages=[{"role": "user", "content": [{"type": "text", "text": "parts"}]}]),
    "content_missing": good(0, messages=[{"role": "user"}, {"role": "assistant", "content": None}]),
    "role_missing": good(0, messages=[{"content": "x"}]),
    "role_number": good(0, messages=[{"role": 3, "content": "x"}]),
    "message_null": good(0, messages=[None]),
    "messages_empty": good(0, messages=[]),
    "messages_null": good(0, messages=None),
    "messages_string": good(0, messages="hello"),
    "messages_json_string": good(0, messages=json.dumps(GOOD["messages"])),
    "odd_roles": good(0, messages=[{"role": "wizard", "content": "x"}, {"role": "user", "content": "é"}]),
    "metadata_string": good(0, metadata="not an object"),
    "metadata_null": good(0, metadata=None),
    "metadata_empty": good(0, metadata={}),
    "metadata_nested": good(0, metadata={"a": {"b": [1, 2]}, "c": None, "d": "x"}),
    "metadata_mixed_list": good(0, metadata={"a": [1, {"b": None}]}),     # Arrow refuses mixed lists
    "metadata_too_deep": good(0)[:-1] + b', "metadata": {"a": ' + deep(140) + b"}}",
    "unknown_field_too_deep": good(0)[:-1] + b', "x": ' + deep(1100) + b"}",
    "unknown_field_deep": good(0)[:-1] + b', "x": ' + deep(900) + b"}",
    "feedback_extra_too_deep": orjson.dumps({k: v for k, v in GOOD.items() if k != "feedback"})[:-1]
    + b', "feedback": {"thumbs": 0, "x": ' + deep(1100) + b"}}",
    "unknown_fields": good(0, extra={"k": [1, 2]}, other="x"),
    "feedback_extra": good(0, feedback={"thumbs": 0, "stars": 5}),
    "feedback_string": good(0, feedback="great"),
    "two_objects": good(0) + good(1),
    "two_objects_spaced": good(0) + b" " + good(1),
    "trailing_garbage": good(0) + b" x}",
    "truncated": good(0)[:40],
    "array": b"[" + good(0) + b"]",
    "bom": b"\xef\xbb\xbf" + good(0),
    "crlf": good(0) + b"\r",
    "leading_space": b"  " + good(0),
    "whitespace_only": b" \t ",
    "invalid_utf8_value": good(0, completion="ok").replace(b'"ok"', b'"o\xffk"'),
    "invalid_utf8_key": good(0).replace(b'"task"', b'"ta\xc3sk"'),
    "non_ascii": good(0, completion="naïve ✓ 😀"),
    "escaped_unicode": good(0).replace(b'"ok"', b'"\\u00e9\\ud83d\\ude00"'),
    "lone_surrogate": good(0).replace(b'"ok"', b'"\\ud800"'),
    "nul_escape": good(0).replace(b'"ok"', b'"a\\u0000b"'),
    "raw_nul": good(0).replace(b'"ok"', b'"a\x00b"'),
    "raw_tab": good(0).replace(b'"ok"', b'"a\tb"'),
    "duplicate_key": good(0)[:-1] + b', "task": "other"}',
    "big_int": good(0).replace(b'"latency_ms":12', b'"latency_ms":99999999999999999999999'),
    "float_thumbs": good(0, feedback={"thumbs": 1.0}),
    "float_latency": good(0, latency_ms=12.0),
    "exp_latency": good(0).replace(b'"latency_ms":12', b'"latency_ms":1e2'),
    "bool_thumbs": good(0, feedback={"thumbs": True}),
    "string_thumbs": good(0, feedback={"thumbs": "up"}),
    "number_id": good(0, request_id=5),
    "number_timestamp": good(0, timestamp=1764000000),
    "naive_timestamp": good(0, timestamp="2026-11-01T10:00:00"),
    "offset_timestamp": good(0, timestamp="2026-11-01T10:00:00+02:00"),
    "impossible_date": good(0, timestamp="2026-02-30T10:00:00Z"),
    "garbage_timestamp": good(0, timestamp="yesterday"),
    "nan": good(0).replace(b'"latency_ms":12', b'"latency_ms":NaN'),
    "html": b"<html>502 Bad Gateway</html>",
}


def rows(table) -> list[dict]:
    """Rows by line, JSON columns as values (the native path keeps the text as written, the exact path re-dumps)."""
    out = []
    for row in table.sort_by("source_line").to_pylist():
        for name in ("messages", "metadata"):
            row[name] = json.loads(row[name]) if row[name] else row[name]
        out.append(row)
    return out


def exact(data: bytes, monkeypatch) -> list[dict]:
    with monkeypatch.context() as m:
        m.setattr(logparse, "FAST_PATH", False)
        return rows(logparse.parse_jsonl(data, "k.jsonl", DAY))


@pytest.mark.parametrize("kind", list(ODD_LINES))
def test_each_odd_line_gives_the_exact_paths_row(kind, monkeypatch):
    data = b"\n".join([good(1), ODD_LINES[kind], b"", good(2)])
    native = logparse.parse_jsonl(data, "k.jsonl", DAY)
    assert rows(native) == exact(data, monkeypatch)
    tables, per_line = native_tables(data, "k.jsonl", DAY)
    natively = sorted(line for t in tables for line in t["source_line"].to_pylist())
    assert natively in ([1, 4], [1, 2, 4]) and [line for line, _ in per_line] == ([2] if natively == [1, 4] else [])


def test_common_lines_are_parsed_natively_and_odd_ones_exactly(monkeypatch):
    lines = [good(i) for i in range(50)] + list(ODD_LINES.values()) + [good(i) for i in range(50, 100)]
    data = b"\n".join(lines)
    tables, per_line = native_tables(data, "k.jsonl", DAY)
    assert sum(t.num_rows for t in tables) >= 100 + 10               # well-typed odd lines (no routing) count too
    routed = {kind for kind, line in zip(ODD_LINES, range(51, 51 + len(ODD_LINES)))
              if line in {n for n, _ in per_line}}
    assert {"flat_feedback", "tool_calls", "content_parts", "role_missing", "two_objects", "bom",
            "invalid_utf8_value", "big_int", "float_thumbs", "metadata_too_deep", "unknown_field_too_deep",
            "duplicate_key", "lone_surrogate", "raw_nul", "messages_string", "metadata_string"} <= routed
    assert not routed & {"messages_empty", "content_missing", "metadata_nested", "non_ascii", "naive_timestamp",
                         "unknown_fields", "feedback_extra", "nul_escape"}
    assert rows(logparse.parse_jsonl(data, "k.jsonl", DAY)) == exact(data, monkeypatch)


def test_small_chunks_and_few_retries_change_nothing(monkeypatch):
    """Many chunks (pipelined over the Arrow thread) and a retry budget that runs out: the rest takes the exact
    path, the rows are the same."""
    lines = [good(i, **({"latency_ms": "slow"} if i % 7 == 0 else {})) for i in range(600)]
    data = b"\n".join(lines) + b"\n"
    want = exact(data, monkeypatch)
    monkeypatch.setattr(logparse_native, "CHUNK_BYTES", 16 << 10)
    assert rows(logparse.parse_jsonl(data, "k.jsonl", DAY)) == want
    monkeypatch.setattr(logparse_native, "MAX_RETRIES", 2)
    tables, per_line = native_tables(data, "k.jsonl", DAY)
    assert per_line and sum(t.num_rows for t in tables) > 0
    assert rows(logparse.parse_jsonl(data, "k.jsonl", DAY)) == want


def test_native_ingest_equals_exact_ingest(tmp_path, monkeypatch):
    """observe + validate on the corrupted demo log (byte flips, cut and repeated lines, odd shapes): the same
    clean rows, quarantine records (reasons, objects, lines), check counts and PII counts."""
    logs = corrupted_log(tmp_path)
    monkeypatch.setattr(logparse_native, "CHUNK_BYTES", 64 << 10)     # several chunks per object
    native_val, native_clean, native_q, _ = ingest(logs, tmp_path / "native")
    monkeypatch.setattr(logparse, "FAST_PATH", False)
    exact_val, exact_clean, exact_q, _ = ingest(logs, tmp_path / "exact")
    assert native_val.rows_in == exact_val.rows_in == len(native_clean) + len(native_q)
    assert native_val.checks == exact_val.checks and native_val.pii == exact_val.pii
    assert native_clean == exact_clean
    assert native_q == exact_q
    assert len(native_q) > 100 and len(native_clean) > 300
