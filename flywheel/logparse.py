"""Log parsing: bytes of one log object (JSONL, JSONL.gz, Parquet) -> one raw-snapshot Arrow table, one row per line.

Every non-blank line becomes one row; lines that are not a JSON object keep their raw text and a reason in
``_errors`` (``malformed_json``, ``invalid_utf8``, ``invalid_unicode``, ``nul_byte``, ``nesting_too_deep``,
``not_an_object``, ``type:<field>``, ``timezone:timestamp``, ``tool_call:arguments``) so validate quarantines them
with their source object and line before Great Expectations sees anything. A UTF-8 byte-order mark at the start of a
line (a file's first line, or files concatenated) is dropped, not taken for a defect. ``flywheel.logformats`` turns an
object's bytes into UTF-8 JSONL text (gzip, UTF-16/32) or a Parquet table; ``flywheel.logfields`` checks the chat.

JSONL takes the native path by default (``flywheel.logparse_native``: Arrow's JSON reader behind a msgspec screen);
the lines it refuses, and every line with ``FAST_PATH = False``, take the exact per-line path below.
"""
from __future__ import annotations

import gc
import os
from operator import attrgetter

import msgspec
import orjson
import pyarrow as pa

from flywheel.logfields import MAX_NESTING, chat_facts, too_deep
from flywheel.logformats import UTF8_BOM, jsonl_bytes, read_parquet
from flywheel.logparse_arrays import RAW_SCHEMA, Feedback, timestamps, utf8_array
from flywheel.logparse_native import native_tables

__all__ = ["RAW_SCHEMA", "parse_jsonl", "parse_object", "parse_records"]

_STR_FIELDS = ("request_id", "task", "model_version", "completion")
_BOOL_FIELDS = ("resolved", "escalated", "edited")


class _RawColumns:
    """The raw-snapshot columns of one object, filled row by row (the per-line path) or in bulk (``_fast_columns``)."""

    def __init__(self, key: str, dt: str):
        self.key, self.dt = key, dt
        self.columns: dict[str, list] = {name: [] for name in RAW_SCHEMA.names}
        self.inputs: list = []   # the input of every row (references, no copies), for late-found errors

    def add_undecoded(self, line: int, raw: bytes, reason: str) -> None:
        """A line that is not a JSON object: only its number, raw text and reason are kept."""
        columns = self.columns
        for name in RAW_SCHEMA.names:
            columns[name].append(None)
        columns["source_line"][-1], columns["_errors"][-1], columns["_decoded"][-1] = line, reason, False
        columns["_raw"][-1] = raw.decode("utf-8", "backslashreplace")
        self.inputs.append(raw)

    def add_record(self, record: dict, line: int, raw) -> None:
        """A decoded record; each field of the wrong type becomes null and a ``type:<field>`` reason."""
        columns, errors = self.columns, []
        self._add_text_fields(record, errors)
        self._add_messages(record.get("messages"), errors)
        self._add_feedback(record, errors)
        self._add_latency_and_metadata(record, errors)
        columns["source_line"].append(line)
        columns["_decoded"].append(True)
        self.inputs.append(raw)
        if errors:
            columns["_errors"].append("|".join(errors))
            columns["_raw"].append(_text(raw))
        else:
            columns["_errors"].append(None)
            columns["_raw"].append(None)

    def _add_text_fields(self, record: dict, errors: list[str]) -> None:
        for name in _STR_FIELDS:
            value = record.get(name)
            if value is not None and type(value) is not str:
                errors.append("type:" + name)
                value = None
            self.columns[name].append(value)
        ts = record.get("timestamp")
        if ts is not None and type(ts) is not str:
            if hasattr(ts, "isoformat") and hasattr(ts, "tzinfo"):   # a Parquet timestamp (naive: timezone:timestamp)
                ts = ts.isoformat()
            else:
                errors.append("type:timestamp")
                ts = None
        self.columns["timestamp"].append(ts)

    def _add_messages(self, messages, errors: list[str]) -> None:
        chat, reason = chat_facts(messages) if messages is not None else (None, None)
        if reason:
            errors.append(reason)
        for name, i in (("messages", 0), ("_n_messages", 1), ("_max_content_chars", 2), ("_roles", 3)):
            self.columns[name].append(chat[i] if chat else None)

    def _add_feedback(self, record: dict, errors: list[str]) -> None:
        columns = self.columns
        feedback = record.get("feedback")
        if feedback is None:
            feedback = record                        # flat logs: feedback fields at the top level
        elif type(feedback) is not dict:
            errors.append("type:feedback")
            feedback = {}
        thumbs = feedback.get("thumbs")
        if thumbs is not None and type(thumbs) is not int:
            if type(thumbs) is float and thumbs.is_integer():
                thumbs = int(thumbs)
            else:
                errors.append("type:thumbs")
                thumbs = None
        columns["thumbs"].append(thumbs)
        for name in _BOOL_FIELDS:
            value = feedback.get(name)
            if value is not None and type(value) is not bool:
                errors.append("type:" + name)
                value = None
            columns[name].append(value)
        comment = feedback.get("comment")
        if comment is not None and type(comment) is not str:
            errors.append("type:comment")
            comment = None
        columns["comment"].append(comment)

    def _add_latency_and_metadata(self, record: dict, errors: list[str]) -> None:
        latency = record.get("latency_ms")
        if latency is not None and type(latency) is not int:
            if type(latency) is float and abs(latency) < 1e15:   # NaN fails the comparison
                latency = int(latency)
            else:
                errors.append("type:latency_ms")
                latency = None
        self.columns["latency_ms"].append(latency)
        metadata = record.get("metadata")
        if metadata is None:
            metadata = b"{}"
        elif type(metadata) is dict and too_deep(metadata):
            errors.append("nesting_too_deep")
            metadata = None
        elif type(metadata) is dict:
            metadata = orjson.dumps(metadata, default=str)
        else:
            errors.append("type:metadata")
            metadata = None
        self.columns["metadata"].append(metadata)

    def table(self) -> pa.Table:
        columns = self.columns
        n = len(columns["source_line"])
        columns["dt"] = [self.dt] * n
        columns["source_object"] = [self.key] * n
        arrays = []
        for column in RAW_SCHEMA:
            if column.name == "timestamp":
                ts, unparsed, naive = timestamps(columns["timestamp"])
                if len(unparsed):
                    self._add_reason(unparsed, "type:timestamp")
                if len(naive):
                    self._add_reason(naive, "timezone:timestamp")
                arrays.append(ts)
            elif column.name in ("messages", "metadata"):
                arrays.append(utf8_array(columns[column.name]))
            elif column.type == pa.int64():
                arrays.append(self._int64(column.name))
            else:
                arrays.append(pa.array(columns[column.name], column.type))
        errors_at = RAW_SCHEMA.names.index("_errors")   # reasons found while building columns: rebuild these two
        arrays[errors_at] = pa.array(columns["_errors"], pa.string())
        arrays[errors_at + 1] = pa.array(columns["_raw"], pa.string())
        return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)

    def _int64(self, name: str) -> pa.Array:
        """An int64 column; a JSON integer beyond 64 bits is a type error of that row, not of the whole object."""
        values = self.columns[name]
        try:
            return pa.array(values, pa.int64())
        except (OverflowError, pa.ArrowInvalid):
            big = [i for i, v in enumerate(values) if v is not None and not -(1 << 63) <= v < (1 << 63)]
            for i in big:
                values[i] = None
            self._add_reason(big, "type:" + name)
            return pa.array(values, pa.int64())

    def _add_reason(self, rows, reason: str) -> None:
        """A reason found after the rows were added: append it, and keep the rows' raw input for the quarantine."""
        errors, raws = self.columns["_errors"], self.columns["_raw"]
        for i in rows:
            errors[i] = reason if errors[i] is None else errors[i] + "|" + reason
            if raws[i] is None:
                raws[i] = _text(self.inputs[i])


def _text(raw) -> str:
    if type(raw) is bytes:
        return raw.decode("utf-8", "backslashreplace")
    return orjson.dumps(raw, default=str).decode()


class _Msg(msgspec.Struct):
    role: str
    content: str | None = None


class _Row(msgspec.Struct):
    """The common, well-typed line; anything else takes the slow path (orjson + per-field checks and reasons)."""

    request_id: str | None = None
    timestamp: str | None = None
    task: str | None = None
    model_version: str | None = None
    messages: msgspec.Raw = msgspec.Raw(b"null")
    completion: str | None = None
    feedback: Feedback | None = None
    latency_ms: int | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"null")


# Which path parses JSONL (the tests prove every path gives the same rows); $FLYWHEEL_PARSE_PATH sets it for
# worker processes too: "native" (Arrow's JSON reader, flywheel.logparse_native), "msgspec" or "exact" (per line).
_PATH = os.environ.get("FLYWHEEL_PARSE_PATH", "native")
FAST_PATH = _PATH != "exact"     # False: every line takes the per-line path
NATIVE_PATH = _PATH == "native"  # with FAST_PATH: Arrow's JSON reader; False: the msgspec fast path
_ROW = msgspec.json.Decoder(_Row)
_MSGS = msgspec.json.Decoder(list[_Msg] | None)
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_CALLS = b"_call"   # "tool_calls", "function_call", "tool_call_id": chats the per-line path checks call by call


def parse_jsonl(data: bytes, key: str, dt: str) -> pa.Table:
    """One raw-snapshot row per non-blank line of ``data``; lines that are not JSON objects keep their raw text.

    Phase 1 decodes the common well-typed line with msgspec (C); phase 2 builds columns with comprehensions;
    every other line takes the per-line path (orjson + per-field checks that name each problem).
    """
    if FAST_PATH and NATIVE_PATH:
        return _parse_native(data, key, dt)
    gc_was = gc.isenabled()
    gc.disable()   # millions of fresh containers: the cyclic GC would rescan them again and again
    try:
        fast, per_line = _decode_fast(data)
        columns = _RawColumns(key, dt)
        if fast:
            _fast_columns(columns, fast)
        del fast
        _add_per_line(columns, per_line)
        return columns.table()         # fast rows first, then the others: deterministic, no re-sort needed
    finally:
        if gc_was:
            gc.enable()


def _parse_native(data: bytes, key: str, dt: str) -> pa.Table:
    """Arrow's reader for the common line, the per-line path for every line it refuses (same rows, same reasons)."""
    tables, per_line = native_tables(data, key, dt)
    columns = _RawColumns(key, dt)
    _add_per_line(columns, [(line, raw) for line, raw in per_line if not raw.isspace()])
    tables.append(columns.table())
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _decode_fast(data: bytes) -> tuple[list[tuple], list[tuple[int, bytes]]]:
    """(line, raw, row, messages, metadata) of the lines msgspec decodes as ``_Row``; (line, raw) of the others."""
    decode_row, decode_messages = _ROW.decode, _MSGS.decode
    fast, per_line = [], []
    for line, raw in enumerate(data.split(b"\n"), 1):
        if not raw or raw.isspace():
            continue
        if not FAST_PATH:
            per_line.append((line, raw))
            continue
        try:
            if not raw.isascii():
                raw.decode("utf-8")          # undecodable bytes anywhere (even in skipped fields): per-line path
            if _CALLS in raw or raw.count(b"[") + raw.count(b"{") > MAX_NESTING:   # tool calls, maybe too deep
                raise msgspec.ValidationError("maybe too deep, or tool calls")
            row = decode_row(raw)
            if row.feedback is None and (b'"thumbs"' in raw or b'"resolved"' in raw):
                raise msgspec.ValidationError("flat feedback")
            metadata = bytes(row.metadata)
            if metadata[:1] != b"{" and metadata != b"null":
                raise msgspec.ValidationError("metadata")
            fast.append((line, raw, row, decode_messages(row.messages), metadata))
        except _FAST_ERRORS:
            per_line.append((line, raw))
    return fast, per_line


def _add_per_line(columns: _RawColumns, lines: list[tuple[int, bytes]]) -> None:
    """Decode each line with orjson; a line that is not a JSON object keeps its reason and raw text."""
    for line, raw in lines:
        try:
            record = orjson.loads(raw[3:] if raw.startswith(UTF8_BOM) else raw)
        except orjson.JSONDecodeError as e:
            columns.add_undecoded(line, raw, _undecodable(raw, str(e)))
            continue
        if type(record) is not dict:
            columns.add_undecoded(line, raw, "not_an_object")
        else:
            columns.add_record(record, line, raw)


def _undecodable(raw: bytes, error: str) -> str:
    """The reason a line is not JSON: invalid_utf8, nul_byte, invalid_unicode, nesting_too_deep or malformed_json."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    if b"\x00" in raw:
        return "nul_byte"
    if "surrogate" in error:
        return "invalid_unicode"     # a \\ud800 escape without its pair: valid JSON text, not valid Unicode
    if "depth limit" in error:
        return "nesting_too_deep"
    return "malformed_json"


_SCALARS = ("request_id", "timestamp", "task", "model_version", "completion", "latency_ms")
_FEEDBACK = ("thumbs", "resolved", "escalated", "edited", "comment")
_role, _content = attrgetter("role"), attrgetter("content")


def _fast_columns(columns: _RawColumns, fast: list[tuple]) -> None:
    """Columns of the fast rows: one C-level pass per group of fields (attrgetter + zip), no per-field loops."""
    values_of = columns.columns
    lines, raws, rows, chats, metadatas = zip(*fast)
    n = len(rows)
    values_of["source_line"].extend(lines)
    columns.inputs.extend(raws)
    for name, values in zip(_SCALARS, zip(*map(attrgetter(*_SCALARS), rows))):
        values_of[name].extend(values)
    no_feedback = Feedback()
    feedbacks = [no_feedback if r.feedback is None else r.feedback for r in rows]
    for name, values in zip(_FEEDBACK, zip(*map(attrgetter(*_FEEDBACK), feedbacks))):
        values_of[name].extend(values)
    values_of["metadata"].extend([b"{}" if m == b"null" else m for m in metadatas])
    values_of["messages"].extend([None if chat is None else bytes(r.messages) for r, chat in zip(rows, chats)])
    values_of["_n_messages"].extend([None if chat is None else len(chat) for chat in chats])
    values_of["_max_content_chars"].extend(
        [None if chat is None else max([len(x or "") for x in map(_content, chat)], default=0) for chat in chats])
    values_of["_roles"].extend([None if chat is None else ",".join(sorted(set(map(_role, chat)))) for chat in chats])
    values_of["_errors"].extend([None] * n)
    values_of["_raw"].extend([None] * n)
    values_of["_decoded"].extend([True] * n)


def parse_records(records: list[dict], key: str, dt: str) -> pa.Table:
    """Same as ``parse_jsonl`` for rows already decoded (Parquet); ``source_line`` is the 1-based row number."""
    columns = _RawColumns(key, dt)
    for line, record in enumerate(records, 1):
        columns.add_record(record, line, record)
    return columns.table()


def parse_object(key: str, data: bytes, dt: str) -> pa.Table:
    """The raw-snapshot rows of one object (``key`` picks Parquet or JSONL; ``flywheel.logformats`` the rest).

    Raises ``flywheel.logformats.UnreadableObject`` (its message starts with the reason) for an unreadable object.
    """
    if key.endswith(".parquet"):
        table = read_parquet(data)
        return parse_records(table.to_pylist() if table is not None else [], key, dt)
    return parse_jsonl(jsonl_bytes(key, data), key, dt)
