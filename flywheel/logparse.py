"""Log parsing: bytes of one log object (JSONL, JSONL.gz, Parquet) -> one raw-snapshot Arrow table, one row per line.

Every non-blank line becomes one row; lines that are not a JSON object keep their raw text and a reason in
``_errors`` (``malformed_json``, ``invalid_utf8``, ``not_an_object``, ``type:<field>``) so validate quarantines them
with their source object and line before Great Expectations sees anything.
"""
from __future__ import annotations

import gc
import gzip
import io
from operator import attrgetter

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Raw snapshot = schema.SNAPSHOT_COLUMNS + internal "_" columns that validate reads and drops:
#   _errors  "|"-joined parse-level reasons (malformed_json, invalid_utf8, not_an_object, type:<field>) or null
#   _raw     the original line for rows with parse-level errors (the rest are rebuilt from their columns)
#   _decoded the line decoded to a JSON object (False rows never reach Great Expectations)
#   _n_messages, _max_content_chars, _roles  facts about `messages` the contract checks
RAW_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("timestamp", pa.timestamp("us", tz="UTC")), ("dt", pa.string()),
    ("task", pa.string()), ("model_version", pa.string()), ("messages", pa.string()), ("completion", pa.string()),
    ("thumbs", pa.int64()), ("resolved", pa.bool_()), ("escalated", pa.bool_()), ("edited", pa.bool_()),
    ("comment", pa.string()), ("latency_ms", pa.int64()), ("metadata", pa.string()),
    ("source_object", pa.string()), ("source_line", pa.int64()),
    ("_errors", pa.string()), ("_raw", pa.string()), ("_decoded", pa.bool_()),
    ("_n_messages", pa.int64()), ("_max_content_chars", pa.int64()), ("_roles", pa.string()),
])
_STR_FIELDS = ("request_id", "task", "model_version", "completion")
_BOOL_FIELDS = ("resolved", "escalated", "edited")


def _content_chars(content) -> int | None:
    if type(content) is str:
        return len(content)
    if content is None:
        return 0
    if type(content) is list:   # content parts: [{"type": "text", "text": ...}, ...]
        return sum(len(p.get("text") or "") if type(p) is dict else 0 for p in content)
    return None


def _messages(value) -> tuple[bytes, int, int, str] | None:
    """(JSON, count, longest content, roles) of a chat, or None when it is not a list of {role, content} objects."""
    if type(value) is str:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if type(value) is not list:
        return None
    longest, roles = 0, set()
    for msg in value:
        if type(msg) is not dict or type(msg.get("role")) is not str:
            return None
        n = _content_chars(msg.get("content"))
        if n is None:
            return None
        longest = max(longest, n)
        roles.add(msg["role"])
    return orjson.dumps(value), len(value), longest, ",".join(sorted(roles))


class _Columns:
    def __init__(self, key: str, dt: str):
        self.key, self.dt = key, dt
        self.c: dict[str, list] = {name: [] for name in RAW_SCHEMA.names}
        self.raws: list = []   # the input of every row (references, no copies), for late-found errors

    def bad(self, line: int, raw: bytes, reason: str) -> None:
        c = self.c
        for name in RAW_SCHEMA.names:
            c[name].append(None)
        c["source_line"][-1], c["_errors"][-1], c["_decoded"][-1] = line, reason, False
        c["_raw"][-1] = raw.decode("utf-8", "backslashreplace")
        self.raws.append(raw)

    def add(self, obj: dict, line: int, raw) -> None:
        c, errors = self.c, []
        for name in _STR_FIELDS:
            v = obj.get(name)
            if v is not None and type(v) is not str:
                errors.append("type:" + name)
                v = None
            c[name].append(v)
        ts = obj.get("timestamp")
        if ts is not None and type(ts) is not str:
            if hasattr(ts, "isoformat") and getattr(ts, "tzinfo", 1) is not None:   # a Parquet timestamp
                ts = ts.isoformat()
            else:
                errors.append("type:timestamp")
                ts = None
        c["timestamp"].append(ts)
        m = obj.get("messages")
        parsed = _messages(m) if m is not None else None
        if m is not None and parsed is None:
            errors.append("type:messages")
        c["messages"].append(parsed[0] if parsed else None)
        c["_n_messages"].append(parsed[1] if parsed else None)
        c["_max_content_chars"].append(parsed[2] if parsed else None)
        c["_roles"].append(parsed[3] if parsed else None)
        fb = obj.get("feedback")
        if fb is None:
            fb = obj                                 # flat logs: feedback fields at the top level
        elif type(fb) is not dict:
            errors.append("type:feedback")
            fb = {}
        v = fb.get("thumbs")
        if v is not None and type(v) is not int:
            if type(v) is float and v.is_integer():
                v = int(v)
            else:
                errors.append("type:thumbs")
                v = None
        c["thumbs"].append(v)
        for name in _BOOL_FIELDS:
            v = fb.get(name)
            if v is not None and type(v) is not bool:
                errors.append("type:" + name)
                v = None
            c[name].append(v)
        v = fb.get("comment")
        if v is not None and type(v) is not str:
            errors.append("type:comment")
            v = None
        c["comment"].append(v)
        v = obj.get("latency_ms")
        if v is not None and (type(v) is not int):
            if type(v) is float and abs(v) < 1e15:   # NaN fails the comparison
                v = int(v)
            else:
                errors.append("type:latency_ms")
                v = None
        c["latency_ms"].append(v)
        v = obj.get("metadata")
        if v is None:
            v = b"{}"
        elif type(v) is dict:
            v = orjson.dumps(v, default=str)
        else:
            errors.append("type:metadata")
            v = None
        c["metadata"].append(v)
        c["source_line"].append(line)
        c["_decoded"].append(True)
        self.raws.append(raw)
        if errors:
            c["_errors"].append("|".join(errors))
            c["_raw"].append(_text(raw))
        else:
            c["_errors"].append(None)
            c["_raw"].append(None)

    def table(self) -> pa.Table:
        c = self.c
        n = len(c["source_line"])
        c["dt"] = [self.dt] * n
        c["source_object"] = [self.key] * n
        arrays = []
        for fld in RAW_SCHEMA:
            if fld.name == "timestamp":
                ts, unparsed = _timestamps(c["timestamp"])
                if len(unparsed):
                    self._mark(unparsed, "type:timestamp")
                arrays.append(ts)
            elif fld.name in ("messages", "metadata"):
                arrays.append(_utf8_array(c[fld.name]))
            elif fld.type == pa.int64():
                arrays.append(self._int64(fld.name))
            else:
                arrays.append(pa.array(c[fld.name], fld.type))
        idx = RAW_SCHEMA.names.index("_errors")
        arrays[idx] = pa.array(c["_errors"], pa.string())
        arrays[idx + 1] = pa.array(c["_raw"], pa.string())
        return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)

    def _int64(self, name: str) -> pa.Array:
        """An int64 column; a JSON integer beyond 64 bits is a type error of that row, not of the whole object."""
        values = self.c[name]
        try:
            return pa.array(values, pa.int64())
        except (OverflowError, pa.ArrowInvalid):
            big = [i for i, v in enumerate(values) if v is not None and not -(1 << 63) <= v < (1 << 63)]
            for i in big:
                values[i] = None
            self._mark(big, "type:" + name)
            return pa.array(values, pa.int64())

    def _mark(self, rows, reason: str) -> None:
        c = self.c
        for i in rows:
            c["_errors"][i] = reason if c["_errors"][i] is None else c["_errors"][i] + "|" + reason
            if c["_raw"][i] is None:
                c["_raw"][i] = _text(self.raws[i])


# The common timestamp shape, years 1900-2099 (well inside pandas' range): parsed by Arrow's strptime. Any other
# string (offsets, fractions, dates only, odd years) goes through pandas' ISO 8601 parser, as before.
_PLAIN_TS = r"^(?:19|20)\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
_TS_TYPE = pa.timestamp("us", tz="UTC")
_TS_FIELDS = (("year", 0), ("month", 5), ("day", 8), ("hour", 11), ("minute", 14), ("second", 17))


def _timestamps(values: list) -> tuple[pa.Array, np.ndarray]:
    """ISO 8601 strings (None = missing) -> timestamp[us, UTC], and the rows whose string is not a timestamp."""
    import pandas as pd

    strings = pa.array(values, pa.string())
    plain = pc.fill_null(pc.match_substring_regex(strings, _PLAIN_TS), False)
    candidates = pc.if_else(plain, strings, "2000-01-01T00:00:00Z")
    fast = pc.strptime(candidates, format="%Y-%m-%dT%H:%M:%SZ", unit="us", error_is_null=True)
    done = pc.and_(plain, fast.is_valid())
    for field, start in _TS_FIELDS:     # strptime rolls Feb 30 over to Mar 2 and :60 to the next minute: refuse
        written = pc.cast(pc.utf8_slice_codeunits(candidates, start, start + (4 if field == "year" else 2)), pa.int64())
        done = pc.and_(done, pc.fill_null(pc.equal(getattr(pc, field)(fast), written), False))
    out = pc.if_else(done, fast, pa.scalar(None, fast.type)).to_numpy(zero_copy_only=False, writable=True)
    rest = np.flatnonzero(pc.and_(strings.is_valid(), pc.invert(done)).to_numpy(zero_copy_only=False))
    unparsed = rest[:0]
    if len(rest):
        raw = pd.Series(strings.take(pa.array(rest)).to_pylist(), dtype=object)
        parsed = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
        out[rest] = parsed.astype("datetime64[us, UTC]").dt.tz_localize(None).to_numpy()
        unparsed = rest[parsed.isna().to_numpy()]
    return pa.array(out, pa.timestamp("us"), from_pandas=True).cast(_TS_TYPE), unparsed


def _utf8_array(values: list) -> pa.Array:
    """String array of UTF-8 byte strings (None = null) by concatenation: no per-item conversion.

    Every value is a slice of a line already checked to be UTF-8, or orjson output; ``validate(full=True)`` checks.
    """
    n = len(values)
    lengths = np.fromiter(map(len, [b"" if v is None else v for v in values]), np.int64, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    valid = np.fromiter([v is not None for v in values], bool, n)
    nulls = n - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    data = pa.py_buffer(b"".join([v for v in values if v is not None]))
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), data, bitmap, nulls)
    arr.validate(full=True)
    return arr.cast(pa.string())


def _text(raw) -> str:
    if type(raw) is bytes:
        return raw.decode("utf-8", "backslashreplace")
    return orjson.dumps(raw, default=str).decode()


class _Msg(msgspec.Struct):
    role: str
    content: str | None = None


class _Feedback(msgspec.Struct):
    thumbs: int | None = None
    resolved: bool | None = None
    escalated: bool | None = None
    edited: bool | None = None
    comment: str | None = None


class _Row(msgspec.Struct):
    """The common, well-typed line; anything else takes the slow path (orjson + per-field checks and reasons)."""

    request_id: str | None = None
    timestamp: str | None = None
    task: str | None = None
    model_version: str | None = None
    messages: msgspec.Raw = msgspec.Raw(b"null")
    completion: str | None = None
    feedback: _Feedback | None = None
    latency_ms: int | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"null")


FAST_PATH = True   # False: every line takes the per-line path (the tests prove both give the same rows)
_ROW = msgspec.json.Decoder(_Row)
_MSGS = msgspec.json.Decoder(list[_Msg] | None)
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)


def parse_jsonl(data: bytes, key: str, dt: str) -> pa.Table:
    """One raw-snapshot row per non-blank line of ``data``; lines that are not JSON objects keep their raw text.

    Phase 1 decodes the common well-typed line with msgspec (C); phase 2 builds columns with comprehensions;
    every other line takes the slow path (orjson + per-field checks that name each problem).
    """
    fast, msgs_of = _ROW.decode, _MSGS.decode
    ok, slow = [], []
    gc_was = gc.isenabled()
    gc.disable()   # millions of fresh containers: the cyclic GC would rescan them again and again
    try:
        for line, raw in enumerate(data.split(b"\n"), 1):
            if not raw or raw.isspace():
                continue
            if not FAST_PATH:
                slow.append((line, raw))
                continue
            try:
                if not raw.isascii():
                    raw.decode("utf-8")          # undecodable bytes anywhere (even in skipped fields): slow path
                r = fast(raw)
                if r.feedback is None and (b'"thumbs"' in raw or b'"resolved"' in raw):
                    raise msgspec.ValidationError("flat feedback")
                meta = bytes(r.metadata)
                if meta[:1] != b"{" and meta != b"null":
                    raise msgspec.ValidationError("metadata")
                ok.append((line, raw, r, msgs_of(r.messages), meta))
            except _FAST_ERRORS:
                slow.append((line, raw))
        cols = _Columns(key, dt)
        if ok:
            _fast_columns(cols, ok)
        del ok
        for line, raw in slow:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                try:
                    raw.decode("utf-8")
                    reason = "malformed_json"
                except UnicodeDecodeError:
                    reason = "invalid_utf8"
                cols.bad(line, raw, reason)
                continue
            if type(obj) is not dict:
                cols.bad(line, raw, "not_an_object")
            else:
                cols.add(obj, line, raw)
        return cols.table()         # fast rows first, then the others: deterministic, no re-sort needed
    finally:
        if gc_was:
            gc.enable()


_SCALARS = ("request_id", "timestamp", "task", "model_version", "completion", "latency_ms")
_FEEDBACK = ("thumbs", "resolved", "escalated", "edited", "comment")
_role, _content = attrgetter("role"), attrgetter("content")


def _fast_columns(cols: _Columns, ok: list) -> None:
    """Columns of the fast rows: one C-level pass per group of fields (attrgetter + zip), no per-field loops."""
    c = cols.c
    lines, raws, rows, msgss, metas = zip(*ok)
    n = len(rows)
    c["source_line"].extend(lines)
    cols.raws.extend(raws)
    for name, values in zip(_SCALARS, zip(*map(attrgetter(*_SCALARS), rows))):
        c[name].extend(values)
    no_feedback = _Feedback()
    fbs = [no_feedback if r.feedback is None else r.feedback for r in rows]
    for name, values in zip(_FEEDBACK, zip(*map(attrgetter(*_FEEDBACK), fbs))):
        c[name].extend(values)
    c["metadata"].extend([b"{}" if m == b"null" else m for m in metas])
    c["messages"].extend([None if m is None else bytes(r.messages) for r, m in zip(rows, msgss)])
    c["_n_messages"].extend([None if m is None else len(m) for m in msgss])
    c["_max_content_chars"].extend([None if m is None else max([len(x or "") for x in map(_content, m)], default=0)
                                    for m in msgss])
    c["_roles"].extend([None if m is None else ",".join(sorted(set(map(_role, m)))) for m in msgss])
    c["_errors"].extend([None] * n)
    c["_raw"].extend([None] * n)
    c["_decoded"].extend([True] * n)


def parse_records(records: list[dict], key: str, dt: str) -> pa.Table:
    """Same as ``parse_jsonl`` for rows already decoded (Parquet); ``source_line`` is the 1-based row number."""
    cols = _Columns(key, dt)
    for line, obj in enumerate(records, 1):
        cols.add(obj, line, obj)
    return cols.table()


def parse_object(key: str, data: bytes, dt: str) -> pa.Table:
    """The raw-snapshot rows of one object (``key`` picks the format: ``.parquet``, ``.jsonl.gz``, ``.jsonl``)."""
    if key.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        return parse_records(table.to_pylist(), key, dt)
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    return parse_jsonl(data, key, dt)
