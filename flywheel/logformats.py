"""What the bytes of one log object are: Parquet, or JSONL text (gzip or not; UTF-8, UTF-16 or UTF-32).

The content decides along with the key, so that a shipper's slip does not turn good rows into garbage:

- gzip data is decompressed whatever the key says; a ``.jsonl.gz`` holding plain JSONL text is read as text;
- UTF-16 / UTF-32 text (with a byte-order mark, or UTF-16 without one, told by its NUL high bytes) is transcoded to
  UTF-8 with the same lines; a code unit that does not decode becomes ``\\xNN`` text, so its line is quarantined
  (``malformed_json``) and the others are kept;
- a UTF-8 byte-order mark is not part of a row: ``flywheel.logparse`` drops it at the start of any line.

An object that cannot be read raises ``UnreadableObject``, whose message starts with the reason (``truncated_gzip``,
``bad_gzip``, ``gzip_bomb``, ``bad_parquet``, ``unsafe_key``); observe quarantines such objects whole.

A gzip object is inflated in chunks and refused as ``gzip_bomb`` once its text passes both ``MAX_INFLATED_BYTES``
(256 MiB) and ``MAX_INFLATION`` (200) times its compressed size: JSONL logs deflate 5-20x, a decompression bomb
1000x, and a worker must not run out of memory on one object.
"""
from __future__ import annotations

import gzip
import io
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
MAX_INFLATED_BYTES = 256 << 20
MAX_INFLATION = 200
_CHUNK = 1 << 20
_SNIFF_UNITS = 32   # UTF-16 without a BOM: the first 32 code units are all ASCII (a JSONL line starts with `{"`)


class UnreadableObject(ValueError):
    """An object observe cannot turn into rows; the message starts with the reason (``truncated_gzip: ...``)."""


def read_parquet(data: bytes) -> pa.Table | None:
    """The table of a Parquet object; None for a 0-byte object (an empty file is no rows, not a broken one)."""
    if not data:
        return None
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as e:
        raise UnreadableObject(f"bad_parquet: {e}") from e


def jsonl_bytes(key: str, data: bytes) -> bytes:
    """The UTF-8 JSONL text of a ``.jsonl`` / ``.jsonl.gz`` object: decompressed and transcoded as needed."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = inflate(data, max(MAX_INFLATED_BYTES, MAX_INFLATION * len(data)))
        except EOFError as e:
            raise UnreadableObject(f"truncated_gzip: {e}") from e
        except (gzip.BadGzipFile, zlib.error) as e:
            if key.endswith(".gz"):
                raise UnreadableObject(f"bad_gzip: {e}") from e   # a .jsonl that merely starts with those bytes
    elif key.endswith(".gz") and data and not _looks_like_text(data):
        raise UnreadableObject(f"bad_gzip: not gzip data and not JSONL text (starts with {data[:8]!r})")
    return utf8_text(data)


def inflate(data: bytes, limit: int) -> bytes:
    """The decompressed bytes of gzip ``data`` (every member), read in chunks; past ``limit`` bytes: ``gzip_bomb``.

    >>> len(inflate(gzip.compress(b"x" * 1000), 1000))
    1000
    """
    parts, size = [], 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise UnreadableObject(f"gzip_bomb: inflates past {limit} bytes from {len(data)} compressed "
                                       f"(limit: {MAX_INFLATION}x its size or {MAX_INFLATED_BYTES} bytes)")
            parts.append(chunk)
    return b"".join(parts)


def _looks_like_text(data: bytes) -> bool:
    """Plain JSONL: after an optional BOM and whitespace, the first byte opens an object or array."""
    head = data[:4096]
    if head.startswith(UTF8_BOM):
        head = head[3:]
    return head.lstrip()[:1] in (b"{", b"[") or _codec(data) is not None


def _codec(data: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) of UTF-16 / UTF-32 text, or None for anything else (UTF-8 or binary)."""
    for bom, codec in _BOMS:
        if data.startswith(bom) and _ascii_units(data[len(bom):], codec, 1):
            return codec, len(bom)
    for codec in ("utf-16-le", "utf-16-be"):
        if _ascii_units(data, codec, _SNIFF_UNITS):
            return codec, 0
    return None


def _ascii_units(data: bytes, codec: str, units: int) -> bool:
    """The first ``units`` code units (fewer if the text is shorter, at least one) are ASCII and not NUL."""
    width = 4 if codec.startswith("utf-32") else 2
    head = data[:units * width]
    if len(head) < width or len(head) % width:
        return False
    low = head[width - 1::width] if codec.endswith("be") else head[0::width]
    zeros = bytes(b for i, b in enumerate(head) if (i % width != width - 1 if codec.endswith("be") else i % width))
    return zeros == bytes(len(zeros)) and all(0 < b < 128 for b in low)


def utf8_text(data: bytes) -> bytes:
    """``data`` as UTF-8: UTF-16 / UTF-32 text transcoded (line for line), anything else as it is."""
    found = _codec(data)
    if found is None:
        return data
    codec, bom = found
    return data[bom:].decode(codec, "backslashreplace").encode("utf-8", "backslashreplace")
