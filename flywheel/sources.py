"""Where interaction logs are read from: a local folder or ``s3://bucket/prefix``, as a list of log objects.

- Layout: ``<source>/.../dt=YYYY-MM-DD/<any>.jsonl | .jsonl.gz | .parquet``; ``log_partition`` says which keys are
  log objects (and of which day); anything else, and anything under a ``_``-folder, is not.
- A key that could name a path outside the source (``..`` segments, an absolute path, a backslash, a control
  character; a local symlink resolving outside the folder) is never read: ``unsafe_key`` says why, observe
  quarantines the object whole.
- Each object is named by its key (relative to the source root) and a version tag (S3 ETag, or size and mtime for
  local files), so a reader can tell a new or rewritten object from one it has processed.
- S3: paginated listing through boto3 (endpoint, region and profile from config; the standard credential chain),
  botocore "standard" retries plus ``with_backoff`` around the whole get+read (connection resets mid-stream).
"""
from __future__ import annotations

import hashlib
import os
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


class LogSource(Protocol):
    uri: str

    def list(self) -> list[ObjectRef]: ...

    def read(self, ref: ObjectRef) -> bytes: ...


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
        """The object's bytes; a key (or symlink) that resolves outside the folder raises ``UnreadableObject``."""
        path = (self.root / ref.key).resolve()
        if unsafe_key(ref.key) or not path.is_relative_to(self.root.resolve()):
            raise UnreadableObject(f"unsafe_key: {ref.key!r} resolves to {path}, outside the source folder")
        return path.read_bytes()


class S3Source:
    """``s3://bucket/prefix`` through boto3 (endpoint/region/profile from config; standard credential chain)."""

    def __init__(self, uri: str, cfg: SourceConfig):
        import boto3
        from botocore.config import Config

        bucket, _, prefix = uri[5:].partition("/")
        self.uri, self.bucket = uri, bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.retries, self.page_size = cfg.retries, cfg.list_page_size
        session = boto3.session.Session(profile_name=cfg.s3.profile, region_name=cfg.s3.region)
        self.client = session.client("s3", endpoint_url=cfg.s3.endpoint_url, config=Config(
            retries={"max_attempts": cfg.retries + 1, "mode": "standard"},
            max_pool_connections=max(cfg.max_workers, 10), connect_timeout=10, read_timeout=60))

    def list(self) -> list[ObjectRef]:
        refs = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self.page_size})
        for page in pages:
            for obj in page.get("Contents", []):
                refs.append(ObjectRef(obj["Key"][len(self.prefix):], obj["ETag"].strip('"'), obj["Size"]))
        return sorted(refs, key=lambda r: r.key)

    def read(self, ref: ObjectRef) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + ref.key)["Body"].read()

        return with_backoff(get, self.retries)


def with_backoff(call: Callable[[], T], retries: int, base: float = 0.2, cap: float = 10.0) -> T:
    """``call()``; on a transient S3 error (connection, timeout, throttling, 5xx) retry with exponential backoff."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(retries):
        try:
            return call()
        except ClientError as e:
            if not _is_transient_s3(e):
                raise
        except (BotoCoreError, ConnectionError, TimeoutError):
            pass
        time.sleep(min(cap, base * 2 ** attempt))
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


def read_and_parse(source_json: str, ref: ObjectRef, dt: str) -> tuple[pa.Table, str, int, float]:
    """Worker process: download one object, hash and parse it; returns (rows, sha256, bytes, parse seconds)."""
    source = _SOURCE_OF_WORKER.get(source_json)
    if source is None:
        source = _SOURCE_OF_WORKER[source_json] = open_source(SourceConfig.model_validate_json(source_json))
    data = source.read(ref)
    start = time.perf_counter()
    table = parse_object(ref.key, data, dt)
    return table, hashlib.sha256(data).hexdigest(), len(data), time.perf_counter() - start
