"""Observe: pull new interaction-log objects (local folder or ``s3://bucket/prefix``) into one Parquet snapshot.

- Layout: ``<source>/.../dt=YYYY-MM-DD/<any>.jsonl | .jsonl.gz | .parquet``; other keys are counted as ignored.
- Incremental: a manifest in ``<state>/manifest/`` remembers every processed object (key + ETag, or size/mtime for
  local files). A rerun reads nothing twice; a new or rewritten object in an old partition is read.
- S3: paginated listing, bounded parallel downloads, botocore "standard" retries plus our own backoff around the
  whole get+read (connection resets mid-stream). Unreadable objects (bad gzip, bad Parquet, persistent I/O errors)
  are quarantined whole in ``<state>/quarantine/objects-<hash>.jsonl``, never skipped silently.
- Parsing (``flywheel.logparse``): every line becomes one snapshot row; lines that are not a JSON object keep
  their raw text and a reason in ``_errors`` so validate quarantines them before Great Expectations.

The manifest is committed by ``commit_manifest`` once the snapshot has been validated (``observe(commit=True)``
commits at once), so a batch stopped by a gate is read again after the fix.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import re
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from pydantic import BaseModel

from flywheel.config.data import SourceConfig
from flywheel.logparse import RAW_SCHEMA, parse_object

# Parquet dictionary encoding only where values repeat: trying it on messages/completions costs time, saves nothing.
DICTIONARY_COLUMNS = ["dt", "task", "model_version", "source_object", "_errors", "_roles"]

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

_WORKER_SOURCE: dict = {}


def _fetch_and_parse(source_json: str, ref: ObjectRef, dt: str) -> tuple[pa.Table, str, int, float]:
    """Worker process: download, hash, decode one object (the source client is made once per process)."""
    src = _WORKER_SOURCE.get(source_json)
    if src is None:
        cfg = SourceConfig.model_validate_json(source_json)
        src = _WORKER_SOURCE[source_json] = open_source(cfg.uri, cfg)
    data = src.read(ref)
    start = time.perf_counter()
    table = parse_object(ref.key, data, dt)
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
        with pool, pq.ParquetWriter(tmp, RAW_SCHEMA, compression="zstd", compression_level=1,
                                            use_dictionary=DICTIONARY_COLUMNS) as writer:
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
                        table = parse_object(ref.key, data, dt)
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
