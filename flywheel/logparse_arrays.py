"""The raw snapshot's schema, and the Arrow arrays ``flywheel.logparse`` builds in bulk: timestamps, UTF-8 strings."""
from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The common timestamp shape, years 1900-2099 (well inside pandas' range): parsed by Arrow's strptime. Any other
# string (offsets, fractions, dates only, odd years) goes through pandas' ISO 8601 parser, as before.
# Raw snapshot = schema.SNAPSHOT_COLUMNS + internal "_" columns that validate reads and drops:
#   _errors  "|"-joined parse-level reasons (malformed_json, invalid_utf8, not_an_object, type:<field>, ...) or null
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
class Feedback(msgspec.Struct):
    """The ``feedback`` object of a log line, as both JSONL fast paths type-check it."""

    thumbs: int | None = None
    resolved: bool | None = None
    escalated: bool | None = None
    edited: bool | None = None
    comment: str | None = None


_PLAIN_TS = r"^(?:19|20)\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
_TS_TYPE = pa.timestamp("us", tz="UTC")
_TS_FIELDS = (("year", 0), ("month", 5), ("day", 8), ("hour", 11), ("minute", 14), ("second", 17))
# A zone after a time of day: Z, +hh, +hhmm, +hh:mm. Without one ("2026-11-01T10:00:00", "2026-11-01") the instant is
# unknown (local time of some server?): such rows are reported, not silently read as UTC.
_ZONED = r"[T ]\d\d(?::?\d\d){0,2}(?:[.,]\d+)?\s*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"


def timestamps(values: list | pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """ISO 8601 strings (None = missing) -> timestamp[us, UTC], the rows whose string is not a timestamp, and the
    rows whose timestamp has no zone (read as UTC, to be quarantined as ``timezone:timestamp``)."""
    import pandas as pd

    strings = values.cast(pa.string()) if isinstance(values, pa.Array) else pa.array(values, pa.string())
    plain = pc.fill_null(pc.match_substring_regex(strings, _PLAIN_TS), False)
    candidates = pc.if_else(plain, strings, "2000-01-01T00:00:00Z")
    fast = pc.strptime(candidates, format="%Y-%m-%dT%H:%M:%SZ", unit="us", error_is_null=True)
    done = pc.and_(plain, fast.is_valid())
    for field, start in _TS_FIELDS:     # strptime rolls Feb 30 over to Mar 2 and :60 to the next minute: refuse
        written = pc.cast(pc.utf8_slice_codeunits(candidates, start, start + (4 if field == "year" else 2)), pa.int64())
        done = pc.and_(done, pc.fill_null(pc.equal(getattr(pc, field)(fast), written), False))
    out = pc.if_else(done, fast, pa.scalar(None, fast.type)).to_numpy(zero_copy_only=False, writable=True)
    rest = np.flatnonzero(pc.and_(strings.is_valid(), pc.invert(done)).to_numpy(zero_copy_only=False))
    unparsed = naive = rest[:0]
    if len(rest):
        texts = strings.take(pa.array(rest))
        raw = pd.Series(texts.to_pylist(), dtype=object)
        parsed = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
        out[rest] = parsed.astype("datetime64[us, UTC]").dt.tz_localize(None).to_numpy()
        unparsed = rest[parsed.isna().to_numpy()]
        zoned = pc.fill_null(pc.match_substring_regex(texts, _ZONED), False).to_numpy(zero_copy_only=False)
        naive = rest[parsed.notna().to_numpy() & ~zoned]
    return pa.array(out, pa.timestamp("us"), from_pandas=True).cast(_TS_TYPE), unparsed, naive


def utf8_array(values: list) -> pa.Array:
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
