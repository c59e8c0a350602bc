"""Capture: a write-ahead log on local disk, and a background writer that turns it into ``dt=`` partition objects.

The request path only appends one JSON line to the open WAL segment (one ``write`` to an ``O_APPEND`` file, plus
``fsync`` when ``capture.fsync``): once that returns, the row survives a killed process (SIGKILL), and the answer
carrying its ``x-request-id`` goes out. Everything slow happens on the writer thread:

1. a segment is closed (renamed ``*.ready``) after ``max_rows`` rows, ``max_bytes`` bytes or ``max_seconds``;
2. each ready segment becomes one gzip JSON Lines object per day of its rows,
   ``<sink>/<prefix>dt=YYYY-MM-DD/<stream>-<wal id>-<segment>.jsonl.gz``, written atomically (local: temporary file
   + rename; S3: one ``put_object``), then the segment is deleted;
3. on start, segments a killed process left (open or ready) are replayed the same way. Object keys are a pure
   function of the segment, and an object that already exists is not written again, so a crash between writing
   the objects and deleting the segment never duplicates a row.

A torn last line (the process killed inside ``write``) was never acknowledged; it is dropped and counted
(``torn_lines``); an unreadable line elsewhere (the disk changed under us) is kept aside in
``corrupt-<segment>.jsonl`` and counted (``corrupt_lines``). One process owns a WAL folder at a time (a file
lock): two gateways need two folders.
"""
from __future__ import annotations

import gzip
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson


class Sink(Protocol):
    uri: str

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, data: bytes) -> None: ...


class LocalSink:
    """A local folder; objects are written to a hidden temporary name and renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # not a log suffix: observe ignores it
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class S3Sink:
    """``s3://bucket/prefix`` through boto3 (endpoint/region/profile of ``source.s3``; standard credential chain)."""

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None):
        import boto3

        bucket, _, prefix = uri[5:].partition("/")
        self.uri, self.bucket = uri, bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        session = boto3.session.Session(profile_name=profile, region_name=region)
        self.client = session.client("s3", endpoint_url=endpoint_url)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            return True
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                               ContentType="application/x-ndjson", ContentEncoding="gzip")


def open_sink(uri: str, endpoint_url: str | None = None, region: str | None = None,
              profile: str | None = None) -> Sink:
    return S3Sink(uri, endpoint_url, region, profile) if uri.startswith("s3://") else LocalSink(uri)


class WalInUse(RuntimeError):
    """Another process owns this WAL folder."""


def day_of_timestamp(row: dict) -> str:
    """The partition day of an interaction row: the UTC date of its ISO ``timestamp``."""
    return str(row["timestamp"])[:10]


@dataclass
class CaptureStats:
    rows_accepted: int = 0  # appended to the WAL (acknowledged)
    rows_written: int = 0  # in sink objects
    objects_written: int = 0
    objects_existing: int = 0  # replayed segments whose object was already there (not rewritten)
    torn_lines: int = 0  # partial last lines of a killed process (never acknowledged)
    write_errors: int = 0  # sink failures (retried; the segment stays on disk)
    corrupt_lines: int = 0  # unreadable lines inside a segment, kept in <wal>/<stream>/corrupt-<segment>.jsonl
    oldest_pending: float | None = None  # time.time() of the oldest row not yet in the sink


class Capture:
    """One stream of rows (interactions, feedback events) → WAL → ``<prefix>dt=YYYY-MM-DD/`` objects in ``sink``."""

    def __init__(self, wal_dir: str | Path, sink: Sink, *, stream: str = "gw", prefix: str = "",
                 max_rows: int = 5000, max_bytes: int = 16 << 20, max_seconds: float = 60.0, fsync: bool = False,
                 day_of: Callable[[dict], str] = day_of_timestamp,
                 transform: Callable[[list[dict]], list[dict]] | None = None):
        from filelock import FileLock, Timeout

        self.dir = Path(wal_dir) / stream
        self.dir.mkdir(parents=True, exist_ok=True)
        self._owner = FileLock(str(self.dir / "owner.lock"), timeout=0, thread_local=False)
        try:
            self._owner.acquire()
        except Timeout:
            raise WalInUse(f"gateway.capture.wal_dir: {self.dir} is in use by another gateway process; give each "
                           "replica its own WAL folder") from None
        self.sink, self.stream, self.prefix, self.day_of = sink, stream, prefix, day_of
        self.transform = transform  # applied on the writer thread (e.g. PII scrubbing), never on the request path
        self.max_rows, self.max_bytes, self.max_seconds, self.fsync = max_rows, max_bytes, max_seconds, fsync
        self.wal_id = _wal_id(self.dir)
        self.stats = CaptureStats()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._closing: list[tuple[int, Path]] = []  # full segments the writer has not closed yet
        self._segment: Path | None = None
        self._rows = self._bytes = 0
        self._opened = 0.0
        self._seq = 0
        for left in sorted(self.dir.glob("*.open")):  # a killed process's segment: ready to be written
            os.replace(left, left.with_suffix(".ready"))
        self._pending_since_ready()

    # ------------------------------------------------------------------------------------ request path
    def append(self, row: dict) -> None:
        """Append one row to the WAL; when this returns the row is durable against a killed process."""
        line = orjson.dumps(row) + b"\n"
        with self._lock:
            if self._fd is None:
                self._open_segment()
            os.write(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
            self._rows += 1
            self._bytes += len(line)
            self.stats.rows_accepted += 1
            if self.stats.oldest_pending is None:
                self.stats.oldest_pending = time.time()
            full = self._rows >= self.max_rows or self._bytes >= self.max_bytes
            if full:  # the next row opens a new segment; the writer thread fsyncs and closes this one
                self._closing.append((self._fd, self._segment))
                self._fd, self._segment = None, None
        if full:
            self._wake.set()

    def _open_segment(self) -> None:
        self._seq += 1
        self._segment = self.dir / f"{time.time_ns():020d}-{self._seq:06d}.open"
        self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._rows = self._bytes = 0
        self._opened = time.monotonic()

    def rotate(self, older_than: float | None = None) -> bool:
        """Close the full segments, and the open one (if it has rows, and is at least ``older_than`` seconds old);
        True if any was closed."""
        with self._lock:
            closing, self._closing = self._closing, []
            young = older_than is not None and time.monotonic() - self._opened < older_than
            if self._fd is not None and self._rows and not young:
                closing.append((self._fd, self._segment))
                self._fd, self._segment = None, None  # the next append opens a new segment
        for fd, segment in closing:
            os.fsync(fd)
            os.close(fd)
            os.replace(segment, segment.with_suffix(".ready"))
        return bool(closing)

    # ------------------------------------------------------------------------------------ writer
    def write_ready(self) -> int:
        """Write every ready segment to the sink (oldest first); returns the rows written. Failures are retried
        on the next call: the segment stays on disk until all its objects exist."""
        done = 0
        for segment in sorted(self.dir.glob("*.ready")):
            try:
                done += self._write_segment(segment)
            except Exception:  # noqa: BLE001 - the sink is down or refused: keep the segment, try again later
                self.stats.write_errors += 1
                break
        self._pending_since_ready()
        return done

    def _write_segment(self, segment: Path) -> int:
        by_day: dict[str, list] = {}
        data = segment.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        corrupt = []
        for i, line in enumerate(lines):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                if i == len(lines) - 1:  # killed inside write(): this row was never acknowledged
                    self.stats.torn_lines += 1
                else:  # the disk changed under us: kept aside for a human, never silently dropped
                    corrupt.append(line + b"\n")
                continue
            by_day.setdefault(self.day_of(row), []).append(row if self.transform else line + b"\n")
        for day, rows in sorted(by_day.items()):
            if self.transform:
                rows = [orjson.dumps(r) + b"\n" for r in self.transform(rows)]
            key = f"{self.prefix}dt={day}/{self.stream}-{self.wal_id}-{segment.stem}.jsonl.gz"
            if self.sink.exists(key):
                self.stats.objects_existing += 1
            else:
                self.sink.put(key, gzip.compress(b"".join(rows), compresslevel=6, mtime=0))
                self.stats.objects_written += 1
        if corrupt:
            (self.dir / f"corrupt-{segment.stem}.jsonl").write_bytes(b"".join(corrupt))
            self.stats.corrupt_lines += len(corrupt)
        segment.unlink()
        n = sum(len(rows) for rows in by_day.values())
        self.stats.rows_written += n
        return n

    def _pending_since_ready(self) -> None:
        ready = sorted(self.dir.glob("*.ready"))
        with self._lock:
            if ready:
                self.stats.oldest_pending = int(ready[0].name.split("-")[0]) / 1e9
            elif self._fd is not None and self._rows:
                self.stats.oldest_pending = time.time() - (time.monotonic() - self._opened)
            else:
                self.stats.oldest_pending = None

    def lag_seconds(self) -> float:
        """Age of the oldest accepted row not yet in the sink (0 when everything is written)."""
        oldest = self.stats.oldest_pending
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def pending_segments(self) -> int:
        return len(list(self.dir.glob("*.ready"))) + (1 if self._fd is not None else 0)

    def _run(self) -> None:
        tick = min(1.0, self.max_seconds / 4)
        backoff = tick
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            self.rotate(older_than=self.max_seconds)
            errors = self.stats.write_errors
            self.write_ready()
            backoff = min(30.0, backoff * 2) if self.stats.write_errors > errors else tick

    def start(self) -> Capture:
        """Start the writer thread (it first writes what a previous process left)."""
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.stream}", daemon=True)
        self._thread.start()
        self._wake.set()
        return self

    def flush(self) -> int:
        """Close the open segment and write everything now (on shutdown, in tests); returns rows written."""
        self.rotate()
        return self.write_ready()

    def close(self) -> None:
        """Stop the writer, flush (SIGTERM path), release the WAL folder."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        self.flush()
        self._owner.release()


def _wal_id(folder: Path) -> str:
    """A stable id of this WAL folder (host + random), part of every object key so replicas never collide."""
    path = folder / "wal-id"
    if not path.exists():
        host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:24] or "host"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{host}-{uuid.uuid4().hex[:8]}")
        os.replace(tmp, path)
    return path.read_text().strip()
