"""The native JSONL path: chunks of lines -> a msgspec screen -> Arrow's JSON reader (C++, explicit schema) -> columns.

Only the common, well-typed line is taken here; every line this path is not sure of goes to the exact per-line path
of ``flywheel.logparse`` (orjson + per-field checks), so each defect keeps its exact reason and line number:

- a line that does not start with ``{`` and end with ``}`` (BOM, spaces, CRLF, truncated lines, arrays) is not tried;
  lines holding a non-ASCII byte are decoded once, and invalid UTF-8 is not tried (Arrow does not check it);
- the screen: one msgspec ``decode_lines`` call per block checks the types the exact path checks (strings, integers,
  booleans, the feedback object) and keeps the JSON text of ``messages`` and ``metadata`` as written. A block that
  fails is split at the line msgspec names (``$[k]`` or a byte offset): that line goes to the exact path, the lines
  around it are tried again (a block that names no line, or gives more objects than lines, is halved);
- Arrow then reads the screened lines of the chunk in one call (``messages`` as ``list<struct<role, content>>``);
  a refusal (content parts, a role that is not a string, duplicate keys, integers past 64 bits, bad escapes) splits
  the block the same way at the row Arrow names. Arrow (which releases the GIL) reads chunk k in a thread while
  msgspec screens chunk k + 1;
- a parsed row whose fields could mean something else to the exact path goes there too: ``messages`` or ``metadata``
  of another JSON type, flat feedback fields without a ``feedback`` object, a message that is null, has no string
  role or has any other key (tool calls, names), metadata that could nest deeper than ``MAX_NESTING``, any field
  nested near orjson's depth limit.

The chat facts (count, longest content, roles) come from Arrow's list columns, without per-row Python.
"""
from __future__ import annotations

import concurrent.futures as cf
import re

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from flywheel.logfields import MAX_NESTING
from flywheel.logparse_arrays import RAW_SCHEMA, Feedback, timestamps, utf8_array

CHUNK_BYTES = 8 << 20       # bytes of lines parsed per Arrow call at most (memory per call stays bounded)
MAX_RETRIES = 256           # rejected blocks per chunk before the rest of the chunk goes to the exact path
_ORJSON_DEPTH = 1000        # orjson refuses deeper documents (nesting_too_deep): such fields go to the exact path
_MSG_FIELDS = ("role", "content")
_FEEDBACK_FIELDS = ("thumbs", "resolved", "escalated", "edited", "comment")
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_FEEDBACK = pa.struct([("thumbs", pa.int64()), ("resolved", pa.bool_()), ("escalated", pa.bool_()),
                       ("edited", pa.bool_()), ("comment", pa.string())])
SCHEMA = pa.schema([("request_id", pa.string()), ("timestamp", pa.string()), ("task", pa.string()),
                    ("model_version", pa.string()), ("messages", pa.list_(_MESSAGE)), ("completion", pa.string()),
                    ("feedback", _FEEDBACK), ("latency_ms", pa.int64())])
_PARSE = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="infer", newlines_in_values=False)
_AT_ROW = re.compile(r"at `\$\[(\d+)\]|in row (\d+)$")
_AT_BYTE = re.compile(r"\(byte (\d+)\)$")
_OPEN, _CLOSE, _NEWLINE = ord("{"), ord("}"), ord("\n")


_ABSENT = msgspec.Raw(b"")


class _Texts(msgspec.Struct):
    """The screen: msgspec checks the scalar types (as the exact path would) and keeps two JSON texts as written."""

    request_id: str | None = None
    timestamp: str | None = None
    task: str | None = None
    model_version: str | None = None
    completion: str | None = None
    latency_ms: int | None = None
    feedback: Feedback | None = None
    messages: msgspec.Raw = msgspec.Raw(b"null")
    metadata: msgspec.Raw = msgspec.Raw(b"null")
    thumbs: msgspec.Raw = _ABSENT      # flat feedback fields: such lines go to the exact path
    resolved: msgspec.Raw = _ABSENT
    escalated: msgspec.Raw = _ABSENT
    edited: msgspec.Raw = _ABSENT
    comment: msgspec.Raw = _ABSENT


_TEXTS = msgspec.json.Decoder(_Texts)


def native_tables(data: bytes, key: str, dt: str) -> tuple[list[pa.Table], list[tuple[int, bytes]]]:
    """Raw-snapshot tables of the lines of ``data`` this path parsed, and (line, raw) of every other non-empty line
    (for the exact path; whitespace-only lines among them are skipped there).

    Chunks of ~``CHUNK_BYTES`` are pipelined over two cores: Arrow (which releases the GIL) parses chunk k in a
    thread while this thread screens chunk k + 1.
    """
    view = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(view == _NEWLINE)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(data)]])
    cumulative = np.cumsum(ends - starts + 1)
    bounds = np.unique(np.searchsorted(cumulative, np.arange(CHUNK_BYTES, int(cumulative[-1]), CHUNK_BYTES)))
    chunks = [(first, last) for first, last in zip([0, *bounds.tolist()], [*bounds.tolist(), len(starts)])
              if first < last]
    tables, exact, pending = [], [], None
    with cf.ThreadPoolExecutor(max_workers=1) as arrow:
        for first, last in [*chunks, (None, None)]:
            screened = None
            if first is not None:
                screened = _Screened(data, view, starts[first:last], ends[first:last], first + 1)
                screened.arrow = arrow.submit(_arrow_blocks, screened.buf, screened.offsets, len(screened.lines))
            if pending is not None:
                table, rest = pending.finish(pending.arrow.result(), key, dt)
                if table is not None:
                    tables.append(table)
                exact.extend(rest)
            pending = screened
    return tables, exact


class _Screened:
    """One chunk's lines after the cheap checks and msgspec's screen: what Arrow is to parse."""

    def __init__(self, data: bytes, view: np.ndarray, starts: np.ndarray, ends: np.ndarray, first_line: int):
        self.data, self.starts, self.ends, self.first_line = data, starts, ends, first_line
        self.nonempty = ends > starts
        shaped = self.nonempty.copy()
        shaped[self.nonempty] = (view[starts[self.nonempty]] == _OPEN) & (view[ends[self.nonempty] - 1] == _CLOSE)
        lines = np.flatnonzero(shaped)                    # chunk-relative indices of the lines still on this path
        buf = _joined(data, starts[lines], ends[lines])
        if not buf.isascii():
            lines = lines[_valid_utf8(buf, _offsets(starts, ends, lines))]
            buf = _joined(data, starts[lines], ends[lines])
        accepted, texts = _screen(buf, _offsets(starts, ends, lines), len(lines))
        messages, metadata = [bytes(t.messages) for t in texts], [bytes(t.metadata) for t in texts]
        plain = [_plain(*row) for row in zip(texts, messages, metadata)]
        self.lines = lines[accepted][np.array(plain, bool)]
        self.messages = [m for m, p in zip(messages, plain) if p]
        self.metadata = [m for m, p in zip(metadata, plain) if p]
        self.buf = _joined(data, starts[self.lines], ends[self.lines])
        self.offsets = _offsets(starts, ends, self.lines)
        self.arrow: cf.Future | None = None

    def finish(self, parsed: list[tuple[int, int, pa.Table]], key: str, dt: str
               ) -> tuple[pa.Table | None, list[tuple[int, bytes]]]:
        """The rows this path keeps, and (line, raw) of the chunk's other non-empty lines."""
        blocks = []
        for i, j, table in parsed:
            columns, routed = _columns(table, self.messages[i:j], self.metadata[i:j])
            if not routed.all():
                blocks.append((self.lines[i:j], columns, ~routed))
        kept = np.zeros(len(self.starts), bool)
        for rows, _, keep in blocks:
            kept[rows[keep]] = True
        data, starts, ends = self.data, self.starts, self.ends
        table = _table(blocks, data, starts, ends, self.first_line, key, dt) if blocks else None
        rest = [(self.first_line + k, data[starts[k]:ends[k]]) for k in np.flatnonzero(self.nonempty & ~kept).tolist()]
        return table, rest


def _offsets(starts: np.ndarray, ends: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Where each of ``lines`` starts in their joined text (one more entry: the end)."""
    return np.concatenate([[0], np.cumsum(ends[lines] - starts[lines] + 1)])


def _plain(texts: _Texts, messages: bytes, metadata: bytes) -> bool:
    """messages a list (or null), metadata an object (or null), no flat feedback fields read (the exact path reads
    them when ``feedback`` is null): else the exact path."""
    return ((messages[:1] == b"[" or messages == b"null") and (metadata[:1] == b"{" or metadata == b"null")
            and (texts.feedback is not None
                 or not (texts.thumbs or texts.resolved or texts.escalated or texts.edited or texts.comment)))


def _valid_utf8(buf: bytes, offsets: np.ndarray) -> np.ndarray:
    """Which lines of ``buf`` are valid UTF-8 (Arrow does not check; the exact path names the others): only the
    lines holding a non-ASCII byte are decoded."""
    good = np.ones(len(offsets) - 1, bool)
    high = np.flatnonzero(np.frombuffer(buf, np.uint8) >= 0x80)
    for line in np.unique(np.searchsorted(offsets, high, side="right") - 1).tolist():
        try:
            buf[offsets[line]:offsets[line + 1]].decode("utf-8")
        except UnicodeDecodeError:
            good[line] = False
    return good


def _joined(data: bytes, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """The given lines, each ending with a newline, one after the other: runs of adjacent lines are sliced whole."""
    if not len(starts):
        return b""
    breaks = np.flatnonzero(starts[1:] != ends[:-1] + 1) + 1
    run_starts = np.concatenate([[0], breaks])
    run_ends = np.concatenate([breaks, [len(starts)]]) - 1
    parts = [data[s:e] + b"\n" if e == len(data) else data[s:e + 1]
             for s, e in zip(starts[run_starts].tolist(), ends[run_ends].tolist())]
    return b"".join(parts)


def _read(block: memoryview) -> pa.Table:
    options = pj.ReadOptions(use_threads=False, block_size=max(len(block) + 1, 1 << 16))
    return pj.read_json(pa.BufferReader(pa.py_buffer(block)), read_options=options, parse_options=_PARSE)


def _line_of(error: Exception, offsets: np.ndarray, i: int, j: int) -> int | None:
    """The line (index in [i, j)) an error names: msgspec's ``$[k]`` or ``(byte b)``, Arrow's ``in row k``."""
    text = str(error)
    if found := _AT_ROW.search(text):
        return i + int(found.group(1) or found.group(2))
    if found := _AT_BYTE.search(text):
        return int(np.searchsorted(offsets, offsets[i] + int(found.group(1)), side="right")) - 1
    return None


def _split(todo: list, refused: list, i: int, j: int, line: int | None) -> None:
    """After a block [i, j) failed at ``line``: that line is refused, the lines around it are tried again; without
    a line, the block is halved (a single line is refused)."""
    if line is not None and i <= line < j:
        refused.append(line)
        todo.extend([(line + 1, j), (i, line)])
    elif j - i == 1:
        refused.append(i)
    else:
        todo.extend([((i + j) // 2, j), (i, (i + j) // 2)])


def _screen(buf: bytes, offsets: np.ndarray, n: int) -> tuple[np.ndarray, list[_Texts]]:
    """Which of the ``n`` lines of ``buf`` msgspec decodes as ``_Texts`` (one call per block), and their texts."""
    view = memoryview(buf)
    accepted = np.zeros(n, bool)
    texts: list = [None] * n
    todo, refused, failures = [(0, n)], [], 0
    while todo:
        i, j = todo.pop()
        if i >= j:
            continue
        if failures > MAX_RETRIES + n // 16:
            continue
        try:
            decoded = _TEXTS.decode_lines(view[offsets[i]:offsets[j]])
        except (msgspec.MsgspecError, ValueError, RecursionError) as e:
            failures += 1
            _split(todo, refused, i, j, _line_of(e, offsets, i, j))
            continue
        if len(decoded) != j - i:               # a line holding two objects: halve until the count matches
            failures += 1
            _split(todo, refused, i, j, None)
            continue
        texts[i:j] = decoded
        accepted[i:j] = True
    return accepted, [t for t in texts if t is not None]


def _arrow_blocks(buf: bytes, offsets: np.ndarray, n: int) -> list[tuple[int, int, pa.Table]]:
    """(i, j, table) of the blocks of lines [i, j) Arrow parsed with one row per line, in order."""
    view = memoryview(buf)
    parsed, todo, refused, failures = [], [(0, n)], [], 0
    while todo:
        i, j = todo.pop()
        if i >= j or failures > MAX_RETRIES:
            continue
        try:
            table = _read(view[offsets[i]:offsets[j]])
        except pa.ArrowException as e:          # ArrowInvalid mostly; any refusal only sends lines to the exact path
            failures += 1
            _split(todo, refused, i, j, _line_of(e, offsets, i, j))
            continue
        if table.num_rows != j - i:             # a line holding two objects: halve until the count matches
            failures += 1
            _split(todo, refused, i, j, None)
            continue
        parsed.append((i, j, table))
    parsed.sort(key=lambda p: p[0])
    return parsed


def _depth(t: pa.DataType) -> int:
    """JSON levels a value of Arrow type ``t`` can have (a struct or list is one level)."""
    if pa.types.is_struct(t):
        return 1 + max((_depth(t.field(k).type) for k in range(t.num_fields)), default=0)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return 1 + _depth(t.value_type)
    return 0


def _any_per_row(flags: np.ndarray, parents: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(parents[flags], minlength=n) > 0 if flags.any() else np.zeros(n, bool)


def _columns(table: pa.Table, messages_text: list[bytes], metadata: list[bytes]) -> tuple[dict, np.ndarray]:
    """The raw columns of one parsed block (before routing), and which rows must take the exact path."""
    n = table.num_rows
    routed = np.zeros(n, bool)
    for name in table.column_names:
        column = table[name]
        if _depth(column.type) >= _ORJSON_DEPTH:     # unknown fields, also inside feedback or messages
            routed |= column.is_valid().to_numpy(zero_copy_only=False)
    messages = table["messages"].combine_chunks()
    chat = _chat_facts(messages, n)
    routed |= chat.pop("routed")
    if "metadata" in table.column_names and _depth(table["metadata"].type) > MAX_NESTING:
        routed |= table["metadata"].is_valid().to_numpy(zero_copy_only=False)
    feedback = table["feedback"].combine_chunks().flatten()
    columns = {name: table[name] for name in ("request_id", "timestamp", "task", "model_version", "completion",
                                              "latency_ms")}
    columns.update({name: feedback[k] for k, name in enumerate(_FEEDBACK_FIELDS)})
    valid = messages.is_valid().to_numpy(zero_copy_only=False).tolist()
    columns["messages"] = [text if v else None for text, v in zip(messages_text, valid)]
    columns["metadata"] = [b"{}" if raw == b"null" else raw for raw in metadata]
    columns.update(chat)
    return columns, routed


def _chat_facts(messages: pa.ListArray, n: int) -> dict:
    """_n_messages, _max_content_chars, _roles of each row, and the rows whose chat the exact path must check."""
    flat = messages.flatten()                       # the messages of valid lists, in order
    parents = pc.list_parent_indices(messages).to_numpy()
    extra = [flat.field(k) for k in range(flat.type.num_fields) if flat.type.field(k).name not in _MSG_FIELDS]
    odd = flat.is_null().to_numpy(zero_copy_only=False)
    roles = flat.field("role")
    odd |= roles.is_null().to_numpy(zero_copy_only=False)
    for field in extra:
        odd |= field.is_valid().to_numpy(zero_copy_only=False)
    routed = _any_per_row(odd, parents, n)
    valid = messages.is_valid().to_numpy(zero_copy_only=False)
    count = np.bincount(parents, minlength=n)
    chars = pc.fill_null(pc.utf8_length(flat.field("content")), 0).to_numpy()
    longest = np.zeros(n, np.int64)
    if len(chars):
        np.maximum.at(longest, parents, chars)
    encoded = pc.dictionary_encode(pc.fill_null(roles, ""))
    names = encoded.dictionary.to_pylist()
    if len(names) > 62:                             # many distinct roles (not a real chat): the exact path decides
        return {"_n_messages": pa.array(count, mask=~valid), "_max_content_chars": pa.array(longest, mask=~valid),
                "_roles": pa.nulls(n, pa.string()), "routed": routed | valid}
    bits = np.zeros(n, np.int64)
    np.bitwise_or.at(bits, parents, np.left_shift(1, encoded.indices.to_numpy().astype(np.int64)))
    masks, inverse = np.unique(bits, return_inverse=True)
    joined = [",".join(sorted(names[b] for b in range(len(names)) if int(m) >> b & 1)) for m in masks.tolist()]
    roles_of_row = pa.array(joined, pa.string()).take(pa.array(inverse.reshape(-1)))
    return {"_n_messages": pa.array(count, mask=~valid), "_max_content_chars": pa.array(longest, mask=~valid),
            "_roles": pc.if_else(pa.array(valid), roles_of_row, pa.scalar(None, pa.string())), "routed": routed}


def _table(blocks: list[tuple], data: bytes, starts: np.ndarray, ends: np.ndarray, first_line: int, key: str,
           dt: str) -> pa.Table:
    """One raw-snapshot table of the kept rows of a chunk's blocks."""
    merged: dict[str, list] = {}
    for _, columns, keep in blocks:
        mask = pa.array(keep)
        for name, values in columns.items():
            if isinstance(values, list):
                values = utf8_array([v for v, k in zip(values, keep.tolist()) if k])
            else:
                values = (values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values).filter(mask)
            merged.setdefault(name, []).append(values)
    columns = {name: pa.concat_arrays(parts) for name, parts in merged.items()}
    rows = np.concatenate([rows[keep] for rows, _, keep in blocks])
    n = len(rows)
    ts, unparsed, naive = timestamps(columns["timestamp"])
    errors: list = [None] * n
    raws: list = [None] * n
    for found, reason in ((unparsed, "type:timestamp"), (naive, "timezone:timestamp")):
        for k in found.tolist():
            errors[k] = reason if errors[k] is None else errors[k] + "|" + reason
            raws[k] = data[starts[rows[k]]:ends[rows[k]]].decode("utf-8", "backslashreplace")
    columns.update(timestamp=ts, dt=pa.array([dt] * n, pa.string()), source_object=pa.array([key] * n, pa.string()),
                   source_line=pa.array(first_line + rows, pa.int64()), _errors=pa.array(errors, pa.string()),
                   _raw=pa.array(raws, pa.string()), _decoded=pa.array(np.ones(n, bool)))
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in RAW_SCHEMA], schema=RAW_SCHEMA)
