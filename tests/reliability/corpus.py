"""The bad-input corpus of the data plane: one small log object (or a few) per defect kind, generated, never edited.

Each ``Defect`` is one kind of bad (or merely odd) interaction-log input and what observe + validate must do with it:

- ``quarantine``: the ``bad`` lines are quarantined with ``reason``; every other row of the object comes out clean;
- ``keep``: odd but valid input (a BOM, CRLF, UTF-16, extra fields...): every row comes out clean, unchanged;
- ``object``: the object is quarantined whole (``unreadable_object: <reason>...``) and never becomes rows;
- ``empty``: the object holds no row; its manifest entry says ``empty``.

Valid rows look like ``demo/logs.py``'s (support_triage). Mixed objects are: valid row, defect, valid, valid. Nights:
night 1 (``DAY1``) holds every kind but one; night 2 (``DAY2``) replays a row of night 1
(``duplicate_id_across_nights``).
``write_night(defects, night, source, outside)`` writes the objects of one night; ``listed`` keys (``..``, absolute
paths) cannot be files: the test's source lists them, and must never read them.
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

DAY1, DAY2 = "2026-11-01", "2026-11-02"
NOW = {1: "2026-11-02T06:00:00+00:00", 2: "2026-11-03T06:00:00+00:00"}  # validate's "now" on each night
SYSTEM = ("You are the support triage assistant of Acme Shop. Answer with ONE line of JSON: "
          '{"intent": "<intent>", "order_id": "<6 digits>"}.')


@dataclass
class Defect:
    kind: str
    what: str                                              # the input, in words
    expect: str                                            # quarantine | keep | object | empty
    reason: str | None                                     # quarantine reason / object reason (after the prefix)
    objects: dict[str, bytes] = field(default_factory=dict)  # key -> bytes
    rows: dict[str, int] = field(default_factory=dict)     # key -> rows it holds (non-blank lines, once decoded)
    clean: dict[str, str] = field(default_factory=dict)    # request_id -> completion, of the rows that stay clean
    bad: list[tuple[str, int]] = field(default_factory=list)   # (key, line) quarantined with ``reason``
    listed: list[str] = field(default_factory=list)        # keys a hostile source lists (no file behind them)
    links: dict[str, bytes] = field(default_factory=dict)  # key -> bytes of a file OUTSIDE the source it links to
    night: int = 1                                         # the night whose validate judges the defect
    earlier: dict[str, bytes] = field(default_factory=dict)  # key -> bytes written (and kept) on night 1

    def all_keys(self) -> list[str]:
        return sorted({*self.objects, *self.earlier, *self.links, *self.listed})


def row(kind: str, i: int, day: str = DAY1, **changes) -> dict:
    """A valid logged interaction, id ``<kind>-<i>``; ``changes`` replace fields (feedback, metadata included)."""
    order = f"{100000 + 7919 * i % 900000:06d}"
    r = {"request_id": f"{kind}-{i}", "timestamp": f"{day}T{8 + i % 12:02d}:{i % 60:02d}:17Z",
         "task": "support_triage", "model_version": "support-bot@champion/3",
         "messages": [{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": f"Where is my order {order}? Thanks."}],
         "completion": f'{{"intent": "track_order", "order_id": "{order}"}}',
         "feedback": {"thumbs": 1, "resolved": True, "escalated": False, "edited": False, "comment": None},
         "latency_ms": 250 + i, "metadata": {"channel": "chat", "locale": "en-US"}}
    r.update(changes)
    return r


def dumps(value) -> bytes:
    return value if type(value) is bytes else orjson.dumps(value)


def jsonl(lines: list) -> bytes:
    return b"\n".join(map(dumps, lines)) + b"\n"


def _key(kind: str, ext: str = "jsonl", day: str = DAY1) -> str:
    return f"dt={day}/{kind}.{ext}"


def mixed(kind: str, what: str, reason: str, bad: Callable[[dict], dict | bytes]) -> Defect:
    """Valid, defect (``bad`` applied to a valid row ``<kind>-1``), valid, valid."""
    rows = [row(kind, i) for i in range(4)]
    lines = [rows[0], bad(rows[1]), rows[2], rows[3]]
    key = _key(kind)
    return Defect(kind, what, "quarantine", reason, {key: jsonl(lines)}, {key: 4},
                  {r["request_id"]: r["completion"] for r in (rows[0], rows[2], rows[3])}, [(key, 2)])


def kept(kind: str, what: str, encode: Callable[[list[dict]], bytes], rows: list[dict] | None = None,
         ext: str = "jsonl") -> Defect:
    """Three valid rows (or ``rows``) written by ``encode``: every one must come out clean."""
    rows = rows or [row(kind, i) for i in range(3)]
    key = _key(kind, ext)
    return Defect(kind, what, "keep", None, {key: encode(rows)}, {key: len(rows)},
                  {r["request_id"]: r["completion"] for r in rows})


def whole(kind: str, what: str, expect: str, reason: str | None, data: bytes, ext: str = "jsonl") -> Defect:
    """An object that is quarantined whole (``object``) or holds no row (``empty``)."""
    key = _key(kind, ext)
    return Defect(kind, what, expect, reason, {key: data}, {key: 0})


def _set(r: dict, **fields) -> dict:
    return {**r, **fields}


def _drop(r: dict, name: str) -> dict:
    return {k: v for k, v in r.items() if k != name}


def _nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _with_chat(r: dict, *messages: dict) -> dict:
    return _set(r, messages=r["messages"] + list(messages))


def _call(arguments, name="lookup_order", **extra) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}, **extra}
    if name is None:
        del call["function"]["name"]
    return {"role": "assistant", "content": None, "tool_calls": [call]}


_TOOL_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'}


def _line_defects() -> list[Defect]:
    """Defects of one line in an otherwise valid JSONL object."""
    return [
        mixed("truncated_json", "a line cut in the middle (a writer killed mid-line)", "malformed_json",
              lambda r: dumps(r)[:57]),
        mixed("garbage_line", "an HTML error page instead of a JSON line", "malformed_json",
              lambda r: b"<html><body>502 Bad Gateway</body></html>"),
        mixed("two_objects_on_one_line", "two JSON objects with no newline between them", "malformed_json",
              lambda r: dumps(r) + dumps(_set(r, request_id="x"))),
        mixed("json_array_line", "a JSON array holding the row", "not_an_object", lambda r: b"[" + dumps(r) + b"]"),
        mixed("json_scalar_line", "a bare JSON null", "not_an_object", lambda r: b"null"),
        mixed("nan_literal", "NaN, which JSON does not have", "malformed_json",
              lambda r: dumps(r).replace(b'"latency_ms":251', b'"latency_ms":NaN')),
        mixed("nesting_too_deep", "metadata nested 3000 levels deep (past any parser's limit)", "nesting_too_deep",
              lambda r: dumps(_set(r, metadata={})).replace(b'"metadata":{}', b'"metadata":{"x":' + b"[" * 3000
                                                            + b"]" * 3000 + b"}")),
        mixed("nesting_deep", "metadata nested 200 levels deep (decodes, cannot be written back)", "nesting_too_deep",
              lambda r: _set(r, metadata={"x": _nested(200)})),
        mixed("invalid_utf8", "bytes that are not UTF-8 inside the completion", "invalid_utf8",
              lambda r: dumps(r).replace(b"track_order", b"track\xff\xfe_order")),
        mixed("latin1_text", "a Latin-1 encoded line (caf\\xe9)", "invalid_utf8",
              lambda r: dumps(r).replace(b"Thanks.", b"Merci, caf\xe9.")),
        mixed("overlong_utf8", "an overlong UTF-8 sequence (\\xc0\\xaf, a disguised '/')", "invalid_utf8",
              lambda r: dumps(r).replace(b"Thanks.", b"Thanks\xc0\xaf")),
        mixed("lone_surrogate", "a \\ud800 escape with no low surrogate", "invalid_unicode",
              lambda r: dumps(r).replace(b"Thanks.", b"Thanks \\ud800.")),
        mixed("nul_byte", "a raw NUL byte inside a string", "nul_byte",
              lambda r: dumps(r).replace(b"Thanks.", b"Thanks\x00.")),
        mixed("wrong_type_request_id", "request_id is a number", "type:request_id",
              lambda r: _set(r, request_id=987654)),
        mixed("wrong_type_timestamp", "timestamp is epoch seconds", "type:timestamp",
              lambda r: _set(r, timestamp=1762000000)),
        mixed("wrong_type_messages", "messages is a plain string", "type:messages", lambda r: _set(r, messages="hi")),
        mixed("wrong_type_completion", "completion is a list", "type:completion",
              lambda r: _set(r, completion=["track_order"])),
        mixed("wrong_type_thumbs", "feedback.thumbs is the string 'up'", "type:thumbs",
              lambda r: _set(r, feedback={**r["feedback"], "thumbs": "up"})),
        mixed("bool_as_number", "latency_ms is true", "type:latency_ms", lambda r: _set(r, latency_ms=True)),
        mixed("wrong_type_feedback", "feedback is a string", "type:feedback", lambda r: _set(r, feedback="great")),
        mixed("wrong_type_metadata", "metadata is a list", "type:metadata", lambda r: _set(r, metadata=[1, 2])),
        mixed("message_without_role", "a message with no role", "type:messages",
              lambda r: _set(r, messages=[{"content": "hi"}])),
        mixed("integer_beyond_64_bits", "latency_ms is 2**70", "type:latency_ms",
              lambda r: dumps(r).replace(b'"latency_ms":251', b'"latency_ms":' + str(2**70).encode())),
        mixed("missing_request_id", "no request_id", "missing:request_id", lambda r: _drop(r, "request_id")),
        mixed("missing_messages", "no messages", "missing:messages", lambda r: _drop(r, "messages")),
        mixed("null_completion", "completion is null", "missing:completion", lambda r: _set(r, completion=None)),
        mixed("empty_request_id", "request_id is ''", "length:request_id", lambda r: _set(r, request_id="")),
        mixed("empty_messages", "messages is []", "range:messages", lambda r: _set(r, messages=[])),
        mixed("huge_completion", "a 2 MB completion", "length:completion",
              lambda r: _set(r, completion="x" * 2_000_000)),
        mixed("huge_message", "a 1 MB user message", "length:messages",
              lambda r: _with_chat(r, {"role": "user", "content": "y" * 1_000_000})),
        mixed("huge_request_id", "a 10,000-character request_id", "length:request_id",
              lambda r: _set(r, request_id="r" * 10_000)),
        mixed("too_many_messages", "a chat of 100 messages", "range:messages",
              lambda r: _with_chat(r, *[{"role": "user", "content": f"turn {i}"} for i in range(98)])),
        mixed("unknown_role", "a message from role 'wizard'", "range:role",
              lambda r: _with_chat(r, {"role": "wizard", "content": "abracadabra"})),
        mixed("tool_call_arguments_not_json", "a tool call whose arguments string is not JSON", "tool_call:arguments",
              lambda r: _with_chat(r, _call('{"order_id": 7'), _TOOL_RESULT)),
        mixed("tool_call_arguments_not_object", "a tool call whose arguments are a JSON list", "tool_call:arguments",
              lambda r: _with_chat(r, _call("[1, 2]"), _TOOL_RESULT)),
        mixed("tool_call_without_name", "a tool call with no function name", "type:tool_calls",
              lambda r: _with_chat(r, _call("{}", name=None), _TOOL_RESULT)),
        mixed("tool_calls_not_a_list", "tool_calls is one object, not a list", "type:tool_calls",
              lambda r: _with_chat(r, {**_call("{}"), "tool_calls": _call("{}")["tool_calls"][0]})),
        mixed("future_timestamp", "a timestamp three days after the night", "range:timestamp",
              lambda r: _set(r, timestamp="2026-11-05T00:00:00Z")),
        mixed("timestamp_without_zone", "a timestamp with no zone (local time of some server?)",
              "timezone:timestamp", lambda r: _set(r, timestamp=f"{DAY1}T10:00:00")),
        mixed("date_only_timestamp", "a date with no time nor zone", "timezone:timestamp",
              lambda r: _set(r, timestamp=DAY1)),
        mixed("impossible_date", "February 30th", "type:timestamp",
              lambda r: _set(r, timestamp="2026-02-30T10:00:00Z")),
        mixed("ancient_timestamp", "the Unix epoch", "range:timestamp",
              lambda r: _set(r, timestamp="1970-01-01T00:00:00Z")),
        mixed("duplicate_id_in_file", "the first row logged again later in the file", "duplicate:request_id",
              lambda r: row("duplicate_id_in_file", 0)),
    ]


def _utf16(codec: str, bom: bytes = b"") -> Callable[[list[dict]], bytes]:
    return lambda rows: bom + jsonl(rows).decode().encode(codec)


def _kept_inputs() -> list[Defect]:
    """Odd but valid input: every row must be kept."""
    bom = b"\xef\xbb\xbf"
    agent = [row("valid_tool_calls", 0, messages=[*row("x", 0)["messages"], _call('{"order_id": "100000"}'),
                                                  _TOOL_RESULT]),
             row("valid_tool_calls", 1, messages=[*row("x", 0)["messages"], _call({"order_id": "107919"}),
                                                  _TOOL_RESULT]),
             row("valid_tool_calls", 2)]
    return [
        kept("utf8_bom", "a UTF-8 byte-order mark before the first row (Windows tools, some shippers)",
             lambda rows: bom + jsonl(rows)),
        kept("utf8_bom_each_part", "files with a BOM each, concatenated: a BOM at the start of a middle line",
             lambda rows: bom + jsonl(rows[:2]) + bom + jsonl(rows[2:])),
        kept("crlf_line_ends", "Windows line ends (CRLF)", lambda rows: jsonl(rows).replace(b"\n", b"\r\n")),
        kept("blank_lines", "blank and whitespace-only lines between rows (not rows)",
             lambda rows: b"\n\n   \n".join(map(dumps, rows)) + b"\n\t\n"),
        kept("no_final_newline", "no newline after the last row", lambda rows: jsonl(rows).rstrip(b"\n")),
        kept("utf16_le_bom", "UTF-16 LE text with its BOM", _utf16("utf-16-le", b"\xff\xfe")),
        kept("utf16_be_bom", "UTF-16 BE text with its BOM", _utf16("utf-16-be", b"\xfe\xff")),
        kept("utf16_le_no_bom", "UTF-16 LE text without a BOM", _utf16("utf-16-le")),
        kept("utf32_bom", "UTF-32 LE text with its BOM", _utf16("utf-32-le", b"\xff\xfe\x00\x00")),
        kept("nul_escaped", "a \\u0000 escape in a string (valid JSON: kept as the character)",
             jsonl, [row("nul_escaped", 0, completion="a\x00b"), row("nul_escaped", 1), row("nul_escaped", 2)]),
        kept("extra_fields", "fields the contract does not know (ignored, the row kept)", jsonl,
             [row("extra_fields", i, trace_id=f"t{i}", debug={"x": [1, 2]}) for i in range(3)]),
        kept("valid_tool_calls", "tool calls with arguments as a JSON string and as an object", jsonl, agent),
        kept("plain_text_named_gz", "uncompressed JSONL in a .jsonl.gz object", jsonl, ext="jsonl.gz"),
        kept("gzip_named_jsonl", "gzip-compressed JSONL in a .jsonl object", lambda rows: gzip.compress(jsonl(rows))),
        kept("utf8_bom_in_gzip", "a BOM inside a gzip-compressed object",
             lambda rows: gzip.compress(bom + jsonl(rows)), ext="jsonl.gz"),
    ]


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _object_defects() -> list[Defect]:
    """Whole objects: empty, compressed wrongly, cut, Parquet of another shape."""
    rows = [row("truncated_gzip", i) for i in range(20)]
    nan = [row("parquet_nan_latency", i, latency_ms=250.0 + i) for i in range(4)]
    nan[1]["latency_ms"] = float("nan")
    naive = [row("parquet_naive_timestamp", i) for i in range(3)]
    for r in naive:
        r["timestamp"] = dt.datetime.fromisoformat(r["timestamp"][:-1])
    other = pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"], "score": [0.1, 0.2, 0.3]})
    good_parquet = _parquet(pa.Table.from_pylist([row("truncated_parquet", i) for i in range(50)]))
    nan_key, naive_key, other_key = (_key(k, "parquet") for k in
                                     ("parquet_nan_latency", "parquet_naive_timestamp", "parquet_other_schema"))
    return [
        whole("empty_file", "a 0-byte .jsonl", "empty", None, b""),
        whole("blank_file", "a .jsonl of newlines and spaces only", "empty", None, b"\n  \n\r\n\n"),
        whole("empty_gzip", "a .jsonl.gz of nothing", "empty", None, gzip.compress(b""), "jsonl.gz"),
        whole("empty_parquet_file", "a 0-byte .parquet", "empty", None, b"", "parquet"),
        whole("parquet_zero_rows", "a Parquet file with the schema and no row", "empty", None,
              _parquet(pa.Table.from_pylist([row("x", 0)]).slice(0, 0)), "parquet"),
        whole("truncated_gzip", "a .jsonl.gz cut short (upload interrupted)", "object", "truncated_gzip",
              gzip.compress(jsonl(rows))[:-40], "jsonl.gz"),
        whole("not_gzip_at_all", "a .jsonl.gz of random binary", "object", "bad_gzip",
              bytes(range(7, 250)) * 4, "jsonl.gz"),
        whole("gzip_bad_crc", "a .jsonl.gz whose checksum does not match", "object", "bad_gzip",
              (lambda z: z[:-8] + bytes([z[-8] ^ 0xFF]) + z[-7:])(gzip.compress(jsonl(rows))), "jsonl.gz"),
        whole("gzip_bomb", "a 300 KB .jsonl.gz that inflates to 300 MiB of NULs (a decompression bomb)", "object",
              "gzip_bomb", gzip.compress(bytes(1 << 20)) * 300, "jsonl.gz"),
        whole("truncated_parquet", "a Parquet file cut in half", "object", "bad_parquet",
              good_parquet[: len(good_parquet) // 2], "parquet"),
        Defect("parquet_other_schema", "a Parquet file of another schema (id, text, score)", "quarantine",
               "missing:request_id", {other_key: _parquet(other)}, {other_key: 3}, {},
               [(other_key, i) for i in (1, 2, 3)]),
        Defect("parquet_nan_latency", "a Parquet float column with a NaN", "quarantine", "type:latency_ms",
               {nan_key: _parquet(pa.Table.from_pylist(nan))}, {nan_key: 4},
               {r["request_id"]: r["completion"] for r in (nan[0], nan[2], nan[3])}, [(nan_key, 2)]),
        Defect("parquet_naive_timestamp", "a Parquet timestamp column without a time zone", "quarantine",
               "timezone:timestamp", {naive_key: _parquet(pa.Table.from_pylist(naive))}, {naive_key: 3}, {},
               [(naive_key, i) for i in (1, 2, 3)]),
        mixed_tail_nul(),
    ]


def mixed_tail_nul() -> Defect:
    """NUL padding after the last line (a crashed writer's preallocated file): one row, the valid ones kept."""
    kind = "nul_padding"
    rows = [row(kind, i) for i in range(3)]
    key = _key(kind)
    return Defect(kind, "a block of NUL bytes after the last line", "quarantine", "nul_byte",
                  {key: jsonl(rows) + b"\x00" * 64}, {key: 4}, {r["request_id"]: r["completion"] for r in rows},
                  [(key, 4)])


def _duplicates_and_keys() -> list[Defect]:
    """Duplicates across objects and nights; keys that could name paths outside the source."""
    kind = "duplicate_id_across_files"
    a, b = _key(kind + "-a"), _key(kind + "-b")
    first = [row(kind, i) for i in range(3)]
    second = [row(kind, 10), first[1], row(kind, 12)]
    kind2 = "duplicate_id_across_nights"
    night1, night2 = _key(kind2 + "-night1"), _key(kind2 + "-night2", day=DAY2)
    yesterday = [row(kind2, i) for i in range(3)]
    today = [row(kind2, 10, DAY2), yesterday[2], row(kind2, 12, DAY2)]
    link = _key("symlink_outside_source")
    return [
        Defect(kind, "a request_id of one object repeated in another object of the night", "quarantine",
               "duplicate:request_id", {a: jsonl(first), b: jsonl(second)}, {a: 3, b: 3},
               {r["request_id"]: r["completion"] for r in first + [second[0], second[2]]}, [(b, 2)]),
        Defect(kind2, "a row of night 1 logged again on night 2 (a re-sent file)", "quarantine",
               "duplicate:earlier_batch", {night2: jsonl(today)}, {night1: 3, night2: 3},
               {r["request_id"]: r["completion"] for r in [*yesterday, today[0], today[2]]}, [(night2, 2)], night=2,
               earlier={night1: jsonl(yesterday)}),
        Defect("key_with_dotdot", "an object key with '..' segments", "object", "unsafe_key",
               listed=[f"dt={DAY1}/../../outside/escape.jsonl"]),
        Defect("absolute_key", "an object key that is an absolute path", "object", "unsafe_key",
               listed=[f"/etc/dt={DAY1}/passwd.jsonl"]),
        Defect("backslash_key", "an object key with Windows '..\\' segments", "object", "unsafe_key",
               listed=[f"dt={DAY1}/..\\..\\outside.jsonl"]),
        Defect("symlink_outside_source", "a symlink in the source folder to a file outside it", "object",
               "unsafe_key", rows={link: 0}, links={link: jsonl([row("symlink_outside_source", 0)])}),
    ]


def build() -> list[Defect]:
    """Every defect kind of the corpus."""
    defects = [*_line_defects(), *_kept_inputs(), *_object_defects(), *_duplicates_and_keys()]
    kinds = [d.kind for d in defects]
    assert len(kinds) == len(set(kinds)), "defect kinds must be unique"
    return defects


def write_night(defects: list[Defect], night: int, source: Path, outside: Path) -> list[str]:
    """Write the objects of ``night`` under ``source`` (links to files under ``outside``); returns listed keys."""
    listed = []
    for d in defects:
        objects = {**(d.earlier if night == 1 else {}), **(d.objects if d.night == night else {})}
        for key, data in objects.items():
            (source / key).parent.mkdir(parents=True, exist_ok=True)
            (source / key).write_bytes(data)
        if d.night != night:
            continue
        for key, data in d.links.items():
            target = outside / key.replace("/", "_")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            (source / key).parent.mkdir(parents=True, exist_ok=True)
            (source / key).symlink_to(target)
        listed += d.listed
    return listed
