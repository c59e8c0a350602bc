"""Where interaction logs are read from: a local folder or ``s3://bucket/prefix``, as a list of log objects.

- Layout: ``<source>/.../dt=YYYY-MM-DD/<any>.jsonl | .jsonl.gz | .parquet``; ``log_partition`` says which keys are
  log objects (and of which day); anything else, and anything under a ``_``-folder, is not.
- A key that could name a path outside the source (``..`` segments, an absolute path, a backslash, a control
  character; a local symlink resolving outside the folder) is never read: ``unsafe_key`` says why, observe
  quarantines the object whole.
- Each object is named by its key (relative to the source root) and a version tag (S3 ETag, or size and mtime for
  local files), so a reader can tell a new or rewritten object from one it has processed. ``read_latest`` returns
  the version it actually read: an S3 object rewritten after it was listed is read as its new version (the get is
  conditional on the ETag, ``IfMatch``; on 412 the key is looked up again), never new bytes under the old ETag.
- S3: paginated listing through boto3 (endpoint, region and profile from config; the standard credential chain).
  Every request (a listing page, a get and its read, a head) is retried by ``with_backoff`` on transient errors:
  5xx, throttling (``SlowDown``), connection refused or reset, timeouts, a body shorter than its Content-Length.
- A source that does not deliver (a permanent error such as 403 or 404, or a transient one on every attempt) raises
  ``SourceError`` naming the object (``s3://bucket/key``) and the error: observe fails, its manifest untouched.
"""
from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pyarrow as pa

from flywheel.config.data import SourceConfig
from flywheel.logformats import UnreadableObject
from flywheel.logparse import parse_object

LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_PARTITION = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})/")
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectRef:
    key: str  # path relative to the source root, posix ("dt=2026-11-24/part-00000.jsonl.gz")
    etag: str  # S3 ETag, or "<size>-<mtime_ns>" for local files
    size: int


class SourceError(OSError):
    """The source did not deliver a listing or an object: a permanent error (403, 404, ...), or a transient one on
    every attempt. The message names the object (``s3://bucket/key``) and the error; ``transient`` says which."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):  # raised in parse worker processes: pickled with its flag
        return type(self), (str(self), self.transient)


class ObjectChanged(SourceError):
    """The object was rewritten after it was listed: its conditional get (``IfMatch``) failed with 412."""


class LogSource(Protocol):
    uri: str

    def list(self) -> list[ObjectRef]: ...

    def read(self, ref: ObjectRef) -> bytes: ...

    def read_latest(self, ref: ObjectRef) -> tuple[bytes, ObjectRef]: ...


def log_partition(key: str) -> str | None:
    """The day (``YYYY-MM-DD``) of a log object's key, or None when the key is not a log object.

    >>> log_partition("dt=2026-11-24/part-0.jsonl.gz"), log_partition("dt=2026-11-24/notes.txt")
    ('2026-11-24', None)
    >>> log_partition("_gold/dt=2026-11-24/gold.jsonl") is None
    True
    """
    match = _PARTITION.search("/" + key)
    if match is None or not key.endswith(LOG_SUFFIXES) or "/_" in "/" + key:
        return None
    return match.group(1)


def unsafe_key(key: str) -> str | None:
    """Why ``key`` must not be read (it could name a path outside the source), or None for an ordinary key.

    >>> unsafe_key("dt=2026-11-24/part-0.jsonl"), unsafe_key("dt=2026-11-24/../../etc/x.jsonl")
    (None, "unsafe_key: '..' segment in 'dt=2026-11-24/../../etc/x.jsonl'")
    """
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        return f"unsafe_key: absolute path {key!r}"
    if ".." in key.split("/"):
        return f"unsafe_key: '..' segment in {key!r}"
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        return f"unsafe_key: backslash or control character in {key!r}"
    return None


class LocalSource:
    """A local folder; hidden (``.``) and ``_`` folders are not walked."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def list(self) -> list[ObjectRef]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source.uri: {self.root} is not a folder")
        refs = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                stat = path.stat()
                refs.append(ObjectRef(path.relative_to(self.root).as_posix(), f"{stat.st_size}-{stat.st_mtime_ns}",
                                      stat.st_size))
        return refs

    def read(self, ref: ObjectRef) -> bytes:
        """The object's bytes; a key (or symlink) that resolves outside the folder raises ``UnreadableObject``, a
        file that cannot be read (gone, denied) ``SourceError``."""
        path = (self.root / ref.key).resolve()
        if unsafe_key(ref.key) or not path.is_relative_to(self.root.resolve()):
            raise UnreadableObject(f"unsafe_key: {ref.key!r} resolves to {path}, outside the source folder")
        try:
            return path.read_bytes()
        except OSError as e:
            raise SourceError(f"{self.root / ref.key}: cannot be read: {e}") from e

    def read_latest(self, ref: ObjectRef) -> tuple[bytes, ObjectRef]:
        return self.read(ref), ref


class S3Source:
    """``s3://bucket/prefix`` through boto3 (endpoint/region/profile from config; standard credential chain).

    Each request (a listing page, a get and its read, a head) is retried on transient errors by ``with_backoff``
    (botocore's own retries are off: one policy, its backoff from config). A get is conditional on the listed ETag.
    """

    def __init__(self, uri: str, cfg: SourceConfig):
        import boto3
        from botocore.config import Config

        bucket, _, prefix = uri[5:].partition("/")
        self.uri, self.bucket = uri, bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.retries, self.backoff, self.page_size = cfg.retries, cfg.retry_base_seconds, cfg.list_page_size
        session = boto3.session.Session(profile_name=cfg.s3.profile, region_name=cfg.s3.region)
        self.client = session.client("s3", endpoint_url=cfg.s3.endpoint_url, config=Config(
            retries={"total_max_attempts": 1}, max_pool_connections=max(cfg.max_workers, 10),
            connect_timeout=10, read_timeout=60))

    def list(self) -> list[ObjectRef]:
        refs, token = [], None
        while True:
            more = {"ContinuationToken": token} if token else {}
            page = self._call("ListObjectsV2", f"s3://{self.bucket}/{self.prefix}", functools.partial(
                self.client.list_objects_v2, Bucket=self.bucket, Prefix=self.prefix, MaxKeys=self.page_size, **more))
            for obj in page.get("Contents", []):
                refs.append(ObjectRef(obj["Key"][len(self.prefix):], obj["ETag"].strip('"'), obj["Size"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(refs, key=lambda r: r.key)

    def read(self, ref: ObjectRef) -> bytes:
        """The bytes of exactly the listed version; ``ObjectChanged`` when the object was rewritten since."""
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + ref.key,
                                          IfMatch=f'"{ref.etag}"')["Body"].read()

        return self._call("GetObject", self._uri(ref.key), get)

    def read_latest(self, ref: ObjectRef) -> tuple[bytes, ObjectRef]:
        """The object's bytes and the version they are: when it was rewritten after it was listed, the key is
        looked up again (HEAD) and that version read, conditional on its own ETag (at most ``retries`` times)."""
        for _ in range(self.retries):
            try:
                return self.read(ref), ref
            except ObjectChanged:
                head = self._call("HeadObject", self._uri(ref.key), functools.partial(
                    self.client.head_object, Bucket=self.bucket, Key=self.prefix + ref.key))
                ref = ObjectRef(ref.key, head["ETag"].strip('"'), head["ContentLength"])
        return self.read(ref), ref

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _call(self, operation: str, uri: str, call: Callable[[], T]) -> T:
        """``with_backoff(call)``; whatever it finally raises becomes a ``SourceError`` naming ``uri``."""
        from botocore.exceptions import ClientError

        try:
            return with_backoff(call, self.retries, self.backoff)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                raise ObjectChanged(f"{uri}: rewritten since it was listed ({operation}: {e})", True) from e
            if _is_transient_s3(e):
                raise SourceError(f"{uri}: {operation} failed after {self.retries + 1} attempts: {e}", True) from e
            raise SourceError(f"{uri}: {operation} failed: {e}") from e
        except _transport_errors() as e:
            raise SourceError(f"{uri}: {operation} failed after {self.retries + 1} attempts: "
                              f"{type(e).__name__}: {e}", True) from e


def _transport_errors() -> tuple[type[Exception], ...]:
    """Transport errors a later attempt may not hit: connection refused or reset, timeouts, a truncated body."""
    from botocore import exceptions as boto
    from urllib3.exceptions import HTTPError

    return (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError, HTTPError, ConnectionError,
            TimeoutError)


def with_backoff(call: Callable[[], T], retries: int, base: float = 0.2, cap: float = 10.0) -> T:
    """``call()``; on a transient S3 error (connection, timeout, truncated body, throttling, 5xx) retry up to
    ``retries`` times, after ``base * 2**attempt`` seconds (at most ``cap``, jittered down to half)."""
    from botocore.exceptions import ClientError

    for attempt in range(retries):
        try:
            return call()
        except ClientError as e:
            if not _is_transient_s3(e):
                raise
        except _transport_errors():
            pass
        time.sleep(min(cap, base * 2 ** attempt) * random.uniform(0.5, 1.0))
    return call()  # the last attempt: whatever it raises is the error


def _is_transient_s3(error) -> bool:
    """A ``ClientError`` a later attempt may not hit: 5xx, 429, throttling, a request timeout."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code = error.response.get("Error", {}).get("Code", "")
    return status >= 500 or status == 429 or code in ("Throttling", "SlowDown", "RequestTimeout")


def open_source(cfg: SourceConfig) -> LogSource:
    """The source ``cfg.uri`` names: ``s3://...`` or a local folder."""
    return S3Source(cfg.uri, cfg) if cfg.uri.startswith("s3://") else LocalSource(cfg.uri)


# ---------------------------------------------------------------- reading in worker processes

_SOURCE_OF_WORKER: dict[str, LogSource] = {}  # source config (JSON) -> its client, made once per worker process


@dataclass(frozen=True)
class Parsed:
    """One object read and parsed in a worker process."""

    ref: ObjectRef  # the version read (newer than the listed one when the object was rewritten meanwhile)
    table: pa.Table | None  # None when the bytes cannot be decoded: ``error`` says why
    digest: str  # sha256 of the bytes
    size: int
    parse_seconds: float
    error: str | None = None


def unreadable_reason(error: Exception) -> str:
    """Why an object's bytes could not be decoded, for its quarantine record."""
    return str(error) if isinstance(error, UnreadableObject) else f"{type(error).__name__}: {error}"


def read_and_parse(source_json: str, ref: ObjectRef, dt: str) -> Parsed:
    """Worker process: download one object, hash and parse it; a ``SourceError`` propagates (the stage fails)."""
    source = _SOURCE_OF_WORKER.get(source_json)
    if source is None:
        source = _SOURCE_OF_WORKER[source_json] = open_source(SourceConfig.model_validate_json(source_json))
    data, ref = source.read_latest(ref)
    start = time.perf_counter()
    try:
        table, error = parse_object(ref.key, data, dt), None
    except Exception as e:  # noqa: BLE001 - whatever breaks decoding quarantines the object
        table, error = None, unreadable_reason(e)
    return Parsed(ref, table, hashlib.sha256(data).hexdigest(), len(data), time.perf_counter() - start, error)
