"""Observe: pull new interaction-log objects (local folder or ``s3://bucket/prefix``) into one Parquet snapshot.

- Layout: ``<source>/.../dt=YYYY-MM-DD/<any>.jsonl | .jsonl.gz | .parquet``; other keys are counted as ignored.
- Incremental: a manifest in ``<state>/manifest/`` remembers every processed object (key + ETag, or size/mtime for
  local files). A rerun reads nothing twice; a new or rewritten object in an old partition is read.
- S3: paginated listing, bounded parallel downloads, botocore "standard" retries plus our own backoff around the
  whole get+read (connection resets mid-stream). Unreadable objects (bad gzip, bad Parquet, persistent I/O errors)
  are quarantined whole in ``<state>/quarantine/objects-<hash>.jsonl``, never skipped silently.
- Parsing: every line becomes one snapshot row; lines that are not a JSON
  object keep their raw text and a reason in ``_errors`` so validate quarantines them before Great Expectations.

The manifest is committed by ``commit_manifest`` once the snapshot has been validated (``observe(commit=True)``
commits at once), so a batch stopped by a gate is read again after the fix.
"""
from __future__ import annotations

import concurrent.futures as cf
import gc
import gzip
import hashlib
import io
import os
import re
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import msgspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from pydantic import BaseModel

from flywheel.config.data import SourceConfig

_PARTITION = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})/")
SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class Observation(BaseModel):
    """What one observe run produced (a small record passed between tasks)."""

    source_uri: str
    new_data: bool
    message: str
    snapshot_uri: str | None = None
    snapshot_hash: str | None = None
    rows: int = 0
    objects_read: int = 0
    objects_quarantined: int = 0
    objects_skipped: int = 0          # already in the manifest (processed before)
    objects_ignored: int = 0          # not under dt=YYYY-MM-DD/ or not a supported suffix
    bytes_read: int = 0
    partitions: list[str] = []
    object_quarantine_uri: str | None = None
    manifest_pending_uri: str | None = None
    seconds: dict[str, float] = {}    # phase -> seconds: list, read (waiting for downloads), parse, write


@dataclass(frozen=True)
class ObjectRef:
    key: str           # path relative to the source root, posix ("dt=2026-11-24/part-00000.jsonl.gz")
    etag: str          # S3 ETag, or "<size>-<mtime_ns>" for local files
    size: int


# ---------------------------------------------------------------- sources


class LocalSource:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def list(self) -> list[ObjectRef]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"source.uri: {self.root} is not a folder")
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                st = path.stat()
                out.append(ObjectRef(path.relative_to(self.root).as_posix(), f"{st.st_size}-{st.st_mtime_ns}", st.st_size))
        return out

    def read(self, ref: ObjectRef) -> bytes:
        return (self.root / ref.key).read_bytes()


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
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix,
                                                                        PaginationConfig={"PageSize": self.page_size}):
            for obj in page.get("Contents", []):
                out.append(ObjectRef(obj["Key"][len(self.prefix):], obj["ETag"].strip('"'), obj["Size"]))
        return sorted(out, key=lambda r: r.key)

    def read(self, ref: ObjectRef) -> bytes:
        return with_backoff(lambda: self.client.get_object(Bucket=self.bucket, Key=self.prefix + ref.key)["Body"].read(),
                            self.retries)


def with_backoff(fn, retries: int, base: float = 0.2, cap: float = 10.0):
    """Call ``fn``; on a transient error (connection, timeout, throttling, 5xx) retry with exponential backoff."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(retries + 1):
        try:
            return fn()
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = e.response.get("Error", {}).get("Code", "")
            transient = status >= 500 or status == 429 or code in ("Throttling", "SlowDown", "RequestTimeout")
            if not transient or attempt == retries:
                raise
        except (BotoCoreError, ConnectionError, TimeoutError):
            if attempt == retries:
                raise
        time.sleep(min(cap, base * 2 ** attempt))


def open_source(uri: str, cfg: SourceConfig):
    return S3Source(uri, cfg) if uri.startswith("s3://") else LocalSource(uri)


# ---------------------------------------------------------------- parsing (hot path: plain loops, no per-row objects)

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
        import pandas as pd

        c = self.c
        n = len(c["source_line"])
        c["dt"] = [self.dt] * n
        c["source_object"] = [self.key] * n
        arrays = []
        for fld in RAW_SCHEMA:
            if fld.name == "timestamp":
                raw_ts = pd.Series(c["timestamp"], dtype=object)
                ts = pd.to_datetime(raw_ts, format="ISO8601", utc=True, errors="coerce")
                unparsed = (raw_ts.notna() & ts.isna()).to_numpy()
                if unparsed.any():
                    self._mark(unparsed.nonzero()[0], "type:timestamp")
                arrays.append(pa.array(ts.astype("datetime64[us, UTC]"), fld.type))
            elif fld.name in ("messages", "metadata"):
                arrays.append(pa.array(c[fld.name], pa.binary()).cast(pa.string()))
            else:
                arrays.append(pa.array(c[fld.name], fld.type))
        idx = RAW_SCHEMA.names.index("_errors")
        arrays[idx] = pa.array(c["_errors"], pa.string())
        arrays[idx + 1] = pa.array(c["_raw"], pa.string())
        return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)

    def _mark(self, rows, reason: str) -> None:
        c = self.c
        for i in rows:
            c["_errors"][i] = reason if c["_errors"][i] is None else c["_errors"][i] + "|" + reason
            if c["_raw"][i] is None:
                c["_raw"][i] = _text(self.raws[i])


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


def _fast_columns(cols: _Columns, ok: list) -> None:
    c = cols.c
    lines, raws, rows, msgss, metas = zip(*ok)
    n = len(rows)
    c["source_line"].extend(lines)
    cols.raws.extend(raws)
    for name in ("request_id", "timestamp", "task", "model_version", "completion", "latency_ms"):
        c[name].extend([getattr(r, name) for r in rows])
    fbs = [r.feedback for r in rows]
    for name in ("thumbs", "resolved", "escalated", "edited", "comment"):
        c[name].extend([None if f is None else getattr(f, name) for f in fbs])
    c["metadata"].extend([b"{}" if m == b"null" else m for m in metas])
    c["messages"].extend([None if m is None else bytes(r.messages) for r, m in zip(rows, msgss)])
    c["_n_messages"].extend([None if m is None else len(m) for m in msgss])
    c["_max_content_chars"].extend([None if m is None else max([len(x.content or "") for x in m], default=0)
                                    for m in msgss])
    c["_roles"].extend([None if m is None else ",".join(sorted({x.role for x in m})) for m in msgss])
    c["_errors"].extend([None] * n)
    c["_raw"].extend([None] * n)
    c["_decoded"].extend([True] * n)


def parse_records(records: list[dict], key: str, dt: str) -> pa.Table:
    """Same as ``parse_jsonl`` for rows already decoded (Parquet); ``source_line`` is the 1-based row number."""
    cols = _Columns(key, dt)
    for line, obj in enumerate(records, 1):
        cols.add(obj, line, obj)
    return cols.table()


# ---------------------------------------------------------------- manifest


def manifest_path(state_dir: str | Path, source_uri: str) -> Path:
    digest = hashlib.sha256(source_uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(state_dir) / "manifest" / f"{digest}.json"


def load_manifest(path: Path) -> dict:
    if not path.exists():
        return {"source": None, "objects": {}}
    return orjson.loads(path.read_bytes())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def commit_manifest(obs: Observation, state_dir: str | Path) -> int:
    """Merge the objects of ``obs`` into the source's manifest; returns how many entries were added or updated."""
    if not obs.manifest_pending_uri or not Path(obs.manifest_pending_uri).exists():
        return 0
    path = manifest_path(state_dir, obs.source_uri)
    with FileLock(str(path) + ".lock", timeout=600):
        manifest = load_manifest(path)
        manifest["source"] = obs.source_uri
        pending = orjson.loads(Path(obs.manifest_pending_uri).read_bytes())
        manifest["objects"].update(pending)
        _write_atomic(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        Path(obs.manifest_pending_uri).unlink()
    return len(pending)


# ---------------------------------------------------------------- observe


def _decode(ref: ObjectRef, data: bytes, dt: str) -> pa.Table:
    if ref.key.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        return parse_records(table.to_pylist(), ref.key, dt)
    if ref.key.endswith(".gz"):
        data = gzip.decompress(data)
    return parse_jsonl(data, ref.key, dt)


_WORKER_SOURCE: dict = {}


def _fetch_and_parse(source_json: str, ref: ObjectRef, dt: str) -> tuple[pa.Table, str, int, float]:
    """Worker process: download, hash, decode one object (the source client is made once per process)."""
    src = _WORKER_SOURCE.get(source_json)
    if src is None:
        cfg = SourceConfig.model_validate_json(source_json)
        src = _WORKER_SOURCE[source_json] = open_source(cfg.uri, cfg)
    data = src.read(ref)
    start = time.perf_counter()
    table = _decode(ref, data, dt)
    return table, hashlib.sha256(data).hexdigest(), len(data), time.perf_counter() - start


def _pool(source: SourceConfig, wanted: list) -> tuple[cf.Executor, bool]:
    """Threads (download ahead, parse here) for small batches; worker processes for big ones."""
    big = sum(ref.size for ref, _ in wanted) >= source.parallel_min_bytes
    if source.parse_workers > 1 and len(wanted) > 1 and big:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver")          # children forked from a clean, single-threaded server
        ctx.set_forkserver_preload(["flywheel.observe"])
        return cf.ProcessPoolExecutor(max_workers=source.parse_workers, mp_context=ctx), True
    return cf.ThreadPoolExecutor(max_workers=source.max_workers), False


def observe(source: SourceConfig, state_dir: str | Path, commit: bool = False, progress: bool = False) -> Observation:
    """Read every object of ``source`` not yet in the manifest into ``<state>/snapshots/<hash>.raw.parquet``."""
    state = Path(state_dir)
    uri = source.uri
    t0 = time.perf_counter()
    src = open_source(uri, source)
    refs = src.list()
    seconds = {"list": time.perf_counter() - t0}
    manifest = load_manifest(manifest_path(state, uri))["objects"]
    wanted, ignored, skipped = [], 0, 0
    for ref in refs:
        m = _PARTITION.search("/" + ref.key)
        if m is None or not ref.key.endswith(SUFFIXES) or "/_" in "/" + ref.key:
            ignored += 1
        elif manifest.get(ref.key, {}).get("etag") == ref.etag:
            skipped += 1
        else:
            wanted.append((ref, m.group(1)))
    if not wanted:
        return Observation(source_uri=uri, new_data=False, objects_skipped=skipped, objects_ignored=ignored,
                           seconds=seconds, message=f"no new data in {uri}: {skipped} objects already processed, "
                                                    f"{ignored} ignored")

    bad_objects: list[dict] = []
    pending: dict[str, dict] = {}
    digests: dict[str, str] = {}
    rows, bytes_read, t_parse, t_write = 0, 0, 0.0, 0.0
    snap_dir = state / "snapshots"
    snap_dir.mkdir(parents=True, exist_ok=True)
    tmp = snap_dir / f".observe-{os.getpid()}-{time.time_ns()}.parquet"

    def fetch(ref: ObjectRef) -> tuple[bytes, str]:
        data = src.read(ref)
        return data, hashlib.sha256(data).hexdigest()

    # Objects are fetched (and, in worker processes, parsed) ahead, at most `window` at once, and appended to the
    # snapshot in key order: the snapshot is deterministic and memory stays bounded.
    bar = _progress(progress, len(wanted))
    t_loop = time.perf_counter()
    pool, processes = _pool(source, wanted)
    window = 2 * source.parse_workers if processes else source.max_workers
    source_json = source.model_dump_json()
    try:
        with pool, pq.ParquetWriter(tmp, RAW_SCHEMA, compression="zstd", compression_level=1) as writer:
            queue: list = []
            todo = list(wanted)
            while todo or queue:
                while todo and len(queue) < window:
                    ref, dt = todo.pop(0)
                    fut = pool.submit(_fetch_and_parse, source_json, ref, dt) if processes else pool.submit(fetch, ref)
                    queue.append((fut, ref, dt))
                fut, ref, dt = queue.pop(0)
                entry = {"etag": ref.etag, "size": ref.size, "dt": dt}
                try:
                    if processes:
                        table, digest, size, spent = fut.result()
                        bytes_read += size
                        t_parse += spent
                    else:
                        data, digest = fut.result()
                        bytes_read += len(data)
                        start = time.perf_counter()
                        table = _decode(ref, data, dt)
                        t_parse += time.perf_counter() - start
                        del data
                except BrokenProcessPool as e:
                    raise RuntimeError(f"observe: a parse worker process died while reading {ref.key} (out of "
                                       "memory?); rerun with source.parse_workers: 1") from e
                except Exception as e:  # noqa: BLE001 - whatever breaks reading or decoding quarantines the object
                    bad_objects.append({"source_object": ref.key, "etag": ref.etag, "size": ref.size,
                                        "reason": f"unreadable_object: {type(e).__name__}: {str(e)[:300]}"})
                    pending[ref.key] = {**entry, "status": "quarantined"}
                    bar.advance()
                    continue
                start = time.perf_counter()
                writer.write_table(table, row_group_size=128 * 1024)
                t_write += time.perf_counter() - start
                rows += table.num_rows
                digests[ref.key] = digest
                pending[ref.key] = {**entry, "status": "read", "rows": table.num_rows}
                del table
                bar.advance()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    loop = time.perf_counter() - t_loop
    content_hash = hashlib.sha256(b"".join(f"{k}\t{d}\n".encode() for k, d in sorted(digests.items()))).hexdigest()
    snapshot = snap_dir / f"{content_hash[:16]}.raw.parquet"
    os.replace(tmp, snapshot)
    if processes:   # parse ran in parallel: report the wall time not spent writing, summed parse time apart
        seconds.update(read_parse_wall=max(loop - t_write, 0.0), parse_cpu=t_parse, write=t_write, read=0.0,
                       parse=max(loop - t_write, 0.0))
    else:
        seconds.update(read=max(loop - t_parse - t_write, 0.0), parse=t_parse, write=t_write)

    obj_q = None
    if bad_objects:
        obj_q = state / "quarantine" / f"objects-{content_hash[:16]}.jsonl"
        _write_atomic(obj_q, b"".join(orjson.dumps(b) + b"\n" for b in bad_objects))
    for entry in pending.values():
        entry["snapshot"] = content_hash[:16]
    pending_path = state / "manifest" / f"pending-{content_hash[:16]}.json"
    _write_atomic(pending_path, orjson.dumps(pending))
    partitions = sorted({dt for _, dt in wanted})
    obs = Observation(
        source_uri=uri, new_data=True, snapshot_uri=str(snapshot), snapshot_hash=content_hash, rows=rows,
        objects_read=len(digests), objects_quarantined=len(bad_objects), objects_skipped=skipped,
        objects_ignored=ignored, bytes_read=bytes_read, partitions=partitions,
        object_quarantine_uri=str(obj_q) if obj_q else None, manifest_pending_uri=str(pending_path),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        message=f"read {rows} rows from {len(digests)} objects in {len(partitions)} partitions"
                + (f"; {len(bad_objects)} unreadable objects quarantined" if bad_objects else ""),
    )
    if commit:
        commit_manifest(obs, state)
    return obs


class _NoBar:
    def advance(self) -> None: ...
    def close(self) -> None: ...


class _Bar:
    def __init__(self, total: int):
        from rich.progress import Progress

        self.p = Progress(transient=True)
        self.p.start()
        self.task = self.p.add_task("observe", total=total)

    def advance(self) -> None:
        self.p.advance(self.task)

    def close(self) -> None:
        self.p.stop()


def _progress(enabled: bool, total: int):
    return _Bar(total) if enabled and total > 1 else _NoBar()
