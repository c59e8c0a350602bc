"""The observe stage: pull new interaction-log objects (local folder or ``s3://bucket/prefix``) into one raw snapshot.

- Sources and layout (``flywheel.sources``): ``<source>/.../dt=YYYY-MM-DD/<any>.jsonl | .jsonl.gz | .parquet``;
  other keys are counted as ignored.
- Incremental: a manifest in ``<state>/manifest/`` remembers every processed object (key + ETag, or size/mtime for
  local files). A rerun reads nothing twice; a new or rewritten object in an old partition is read.
- Unreadable objects (truncated or bad gzip, bad Parquet) and objects whose key could name a path outside the
  source (``..``, absolute, a symlink out of the folder: never read) are quarantined whole in
  ``<state>/quarantine/objects-<hash>.jsonl``, never skipped silently. An object the source does not deliver
  (``SourceError``: denied, gone, or a transient S3 error on every retry) fails the stage, naming it; the manifest is
  untouched, so the next run reads it. An object rewritten after listing is read as its new version, under its ETag.
  An empty object (no non-blank line) is read with 0 rows: its manifest entry says ``"status": "empty"`` and the
  message counts it.
- Parsing (``flywheel.logparse``): every line becomes one snapshot row; lines that are not a JSON object keep
  their raw text and a reason in ``_errors`` so validate quarantines them before Great Expectations.
- Delayed feedback (``flywheel.feedback``): the events under ``<source>/_feedback/dt=.../`` (the gateway's
  ``POST /v1/feedback``) are folded into ``<state>/feedback/table.parquet`` every night, new interactions or not;
  the score stage joins that table.

The manifest is committed by ``commit_manifest`` once the snapshot has been validated (``observe(commit=True)``
commits at once), so a batch stopped by a gate is read again after the fix. ``observe_logs`` and
``commit_observed`` are the Prefect tasks; both retry transient I/O failures only.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import socket
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config.data import SourceConfig
from flywheel.feedback import FeedbackObservation, observe_feedback
from flywheel.logformats import UnreadableObject
from flywheel.logparse import RAW_SCHEMA, parse_object
from flywheel.manifest import commit_manifest, load_manifest, manifest_path, write_atomic
from flywheel.quarantine import FILE_MODE, raw_dir, write_private
from flywheel.records import Observation
from flywheel.retries import retry_on_transient_io
from flywheel.sources import (
    LogSource,
    ObjectRef,
    log_partition,
    open_source,
    read_and_parse,
    unreadable_reason,
    unsafe_key,
)

# Parquet dictionary encoding only where values repeat: trying it on messages/completions costs time, saves nothing.
DICTIONARY_COLUMNS = ["dt", "task", "model_version", "source_object", "_errors", "_roles"]
ROW_GROUP_ROWS = 128 * 1024
READ_AHEAD_BYTES = 256 << 20  # bytes fetched ahead at most (listed sizes; at least one object per worker)


# ---------------------------------------------------------------- observe


@dataclass(frozen=True)
class _NewObjects:
    wanted: list[tuple[ObjectRef, str]]  # (object, its day) not processed yet, in key order
    skipped: int  # already in the manifest with the same version tag
    ignored: int  # not a log object
    unsafe: list[tuple[ObjectRef, str, str]] = field(default_factory=list)  # (object, day, reason): never read


@dataclass
class _ReadTally:
    """What the read loop has gathered so far."""

    rows: int = 0
    bytes_read: int = 0
    parse_seconds: float = 0.0
    write_seconds: float = 0.0
    digests: dict[str, str] = field(default_factory=dict)  # key -> sha256 of the object's bytes (objects read)
    pending: dict[str, dict] = field(default_factory=dict)  # key -> manifest entry, committed after validate
    unreadable: list[dict] = field(default_factory=list)  # object quarantine records
    empty: int = 0  # objects read with no rows

    def quarantine(self, ref: ObjectRef, dt: str, reason: str) -> None:
        """Quarantine one object whole: a record with its reason, and its manifest entry (not read again)."""
        self.unreadable.append({"source_object": ref.key, "etag": ref.etag, "size": ref.size, "reason": reason})
        self.pending[ref.key] = {"etag": ref.etag, "size": ref.size, "dt": dt, "status": "quarantined"}


def _new_objects(refs: list[ObjectRef], processed: dict[str, dict]) -> _NewObjects:
    wanted, skipped, ignored, unsafe = [], 0, 0, []
    for ref in refs:
        day = log_partition(ref.key)
        if day is None:
            ignored += 1
        elif processed.get(ref.key, {}).get("etag") == ref.etag:
            skipped += 1
        elif reason := unsafe_key(ref.key):
            unsafe.append((ref, day, reason))
        else:
            wanted.append((ref, day))
    return _NewObjects(wanted, skipped, ignored, unsafe)


def _read_and_hash(reader: LogSource, ref: ObjectRef) -> tuple[bytes, str, ObjectRef]:
    data, ref = reader.read_latest(ref)
    return data, hashlib.sha256(data).hexdigest(), ref


def _executor(source: SourceConfig, wanted: list[tuple[ObjectRef, str]]) -> tuple[cf.Executor, bool]:
    """Threads (download ahead, parse here) for small batches; worker processes (True) for big ones."""
    big = sum(ref.size for ref, _ in wanted) >= source.parallel_min_bytes
    if source.parse_workers > 1 and len(wanted) > 1 and big:
        import multiprocessing as mp

        context = mp.get_context("forkserver")  # children forked from a clean, single-threaded server
        context.set_forkserver_preload(["flywheel.sources"])
        return cf.ProcessPoolExecutor(max_workers=source.parse_workers, mp_context=context), True
    return cf.ThreadPoolExecutor(max_workers=source.max_workers), False


def _parse(ref: ObjectRef, data: bytes, dt: str) -> tuple[pa.Table | None, str | None]:
    try:
        return parse_object(ref.key, data, dt), None
    except Exception as e:  # noqa: BLE001 - whatever breaks decoding quarantines the object
        return None, unreadable_reason(e)


def _parsed(future: cf.Future, ref: ObjectRef, dt: str, in_processes: bool, tally: _ReadTally) -> pa.Table | None:
    """The rows of one fetched object; None (and a quarantine record) when its bytes cannot be decoded.

    The manifest entry names the version read (``read_latest``: newer than the listed one when the object was
    rewritten meanwhile). A ``flywheel.sources.SourceError`` (the object not delivered) propagates: the stage fails.
    """
    try:
        if in_processes:
            parsed = future.result()
            table, digest, ref, error = parsed.table, parsed.digest, parsed.ref, parsed.error
            tally.bytes_read += parsed.size
            parse_seconds = parsed.parse_seconds
        else:
            data, digest, ref = future.result()
            tally.bytes_read += len(data)
            start = time.perf_counter()
            table, error = _parse(ref, data, dt)
            parse_seconds = time.perf_counter() - start
    except BrokenProcessPool as e:
        raise RuntimeError(f"observe: a parse worker process died while reading {ref.key} (out of memory?); "
                           "rerun with source.parse_workers: 1") from e
    except UnreadableObject as e:  # an unsafe key, refused by the source
        table, error = None, unreadable_reason(e)
    if table is None:
        tally.quarantine(ref, dt, f"unreadable_object: {error[:300]}")
        return None
    entry = {"etag": ref.etag, "size": ref.size, "dt": dt}
    tally.parse_seconds += parse_seconds
    tally.digests[ref.key] = digest
    tally.empty += table.num_rows == 0
    tally.pending[ref.key] = {**entry, "status": "read" if table.num_rows else "empty", "rows": table.num_rows}
    return table


def _read_objects(source: SourceConfig, reader: LogSource, wanted: list[tuple[ObjectRef, str]], snapshot: Path,
                  progress: bool) -> tuple[_ReadTally, float, bool]:
    """Write the rows of ``wanted`` to ``snapshot``; returns the tally, loop seconds, and whether processes parsed.

    Objects are fetched (and, in worker processes, parsed) ahead, at most ``window`` at once and about
    ``READ_AHEAD_BYTES`` (listed sizes), and appended in key order: the snapshot is deterministic and memory stays
    bounded by the objects' size, not the night's.
    """
    tally = _ReadTally()
    bar = _progress(progress, len(wanted))
    executor, in_processes = _executor(source, wanted)
    window = 2 * source.parse_workers if in_processes else source.max_workers
    floor = source.parse_workers if in_processes else 1   # objects in flight whatever their size: every worker busy
    source_json = source.model_dump_json()

    def submit(ref: ObjectRef, dt: str) -> cf.Future:
        if in_processes:
            return executor.submit(read_and_parse, source_json, ref, dt)
        return executor.submit(_read_and_hash, reader, ref)

    start = time.perf_counter()
    try:
        with executor, pq.ParquetWriter(snapshot, RAW_SCHEMA, compression="zstd", compression_level=1,
                                        use_dictionary=DICTIONARY_COLUMNS) as writer:
            todo, in_flight = deque(wanted), deque()
            while todo or in_flight:
                while todo and len(in_flight) < window and (len(in_flight) < floor or sum(
                        r.size for _, r, _ in in_flight) + todo[0][0].size <= READ_AHEAD_BYTES):
                    ref, dt = todo.popleft()
                    in_flight.append((submit(ref, dt), ref, dt))
                future, ref, dt = in_flight.popleft()
                table = _parsed(future, ref, dt, in_processes, tally)
                if table is not None:
                    write_start = time.perf_counter()
                    writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                    tally.write_seconds += time.perf_counter() - write_start
                    tally.rows += table.num_rows
                    del table
                bar.advance()
    finally:
        bar.close()
    return tally, time.perf_counter() - start, in_processes


def _phase_seconds(tally: _ReadTally, loop_seconds: float, in_processes: bool) -> dict[str, float]:
    """Seconds of read, parse and write; with parse processes, the wall time not spent writing, parse CPU apart."""
    if in_processes:
        not_writing = max(loop_seconds - tally.write_seconds, 0.0)
        return {"read_parse_wall": not_writing, "parse_cpu": tally.parse_seconds, "write": tally.write_seconds,
                "read": 0.0, "parse": not_writing}
    return {"read": max(loop_seconds - tally.parse_seconds - tally.write_seconds, 0.0), "parse": tally.parse_seconds,
            "write": tally.write_seconds}


def _content_hash(digests: dict[str, str]) -> str:
    """One hash of the objects read: their keys and byte hashes, in key order."""
    lines = b"".join(f"{key}\t{digest}\n".encode() for key, digest in sorted(digests.items()))
    return hashlib.sha256(lines).hexdigest()


def _write_side_files(state: Path, tag: str, tally: _ReadTally) -> tuple[Path | None, Path]:
    """The object quarantine (None when every object was readable) and the pending manifest entries."""
    object_quarantine = None
    if tally.unreadable:
        object_quarantine = state / "quarantine" / f"objects-{tag}.jsonl"
        write_private(object_quarantine, b"".join(orjson.dumps(record) + b"\n" for record in tally.unreadable))
    for entry in tally.pending.values():
        entry["snapshot"] = tag
    pending = state / "manifest" / f"pending-{tag}.json"
    write_atomic(pending, orjson.dumps(tally.pending))
    return object_quarantine, pending


@dataclass
class ObservePlan:
    """What observe reads tonight: the new objects in parts (each one ``read_part`` call, one mapped Prefect task in
    the flows), the objects never to read, and what listing found besides."""

    source_uri: str
    plan_id: str  # hash of the objects to read (key and version): names the part files
    parts: list[list[tuple[ObjectRef, str]]]  # (object, its day), consecutive runs of the key order
    unsafe: list[tuple[ObjectRef, str, str]]  # (object, day, reason): quarantined, never read
    skipped: int
    ignored: int
    feedback: FeedbackObservation
    seconds: dict[str, float]


@dataclass
class PartRead:
    """One part's rows (a Parquet file of the raw schema), its tally, and where it was read."""

    path: str
    tally: _ReadTally
    loop_seconds: float
    in_processes: bool
    worker: str  # host:pid of the process that read it


def _split_parts(wanted: list[tuple[ObjectRef, str]], part_bytes: int | None) -> list[list[tuple[ObjectRef, str]]]:
    """Consecutive runs of ``wanted`` of about ``part_bytes`` (listed sizes) each; None: one part."""
    parts: list[list[tuple[ObjectRef, str]]] = []
    size = 0
    for ref, dt in wanted:
        if not parts or (part_bytes is not None and size >= part_bytes):
            parts.append([])
            size = 0
        parts[-1].append((ref, dt))
        size += ref.size
    return parts


def plan_observation(source: SourceConfig, state_dir: str | Path, part_bytes: int | None = None) -> ObservePlan:
    """Fold the delayed feedback, list ``source`` and split the objects not yet in the manifest into parts."""
    state = Path(state_dir)
    start = time.perf_counter()
    feedback = observe_feedback(source, state)  # delayed feedback, folded every night (flywheel.feedback)
    refs = open_source(source).list()
    new = _new_objects(refs, load_manifest(manifest_path(state, source.uri))["objects"])
    versions = "".join(f"{ref.key}\t{ref.etag}\n" for ref, _ in new.wanted)
    return ObservePlan(source_uri=source.uri, plan_id=hashlib.sha256(versions.encode()).hexdigest()[:16],
                       parts=_split_parts(new.wanted, part_bytes), unsafe=new.unsafe, skipped=new.skipped,
                       ignored=new.ignored, feedback=feedback, seconds={"list": time.perf_counter() - start})


def read_part(source: SourceConfig, state_dir: str | Path, plan_id: str, index: int,
              part: list[tuple[ObjectRef, str]], progress: bool = False) -> PartRead:
    """Read and parse one part's objects into ``<state>/raw/.part-<plan>-<index>-<pid>.parquet`` (owner-only)."""
    path = raw_dir(Path(state_dir)) / f".part-{plan_id}-{index:05d}-{os.getpid()}-{time.time_ns()}.parquet"
    try:
        tally, loop_seconds, in_processes = _read_objects(source, open_source(source), part, path, progress)
        os.chmod(path, FILE_MODE)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return PartRead(path=str(path), tally=tally, loop_seconds=loop_seconds, in_processes=in_processes,
                    worker=f"{socket.gethostname()}:{os.getpid()}")


def _merged(reads: list[PartRead]) -> _ReadTally:
    tally = _ReadTally()
    for r in reads:
        t = r.tally
        tally.rows, tally.bytes_read, tally.empty = tally.rows + t.rows, tally.bytes_read + t.bytes_read, \
            tally.empty + t.empty
        tally.parse_seconds += t.parse_seconds
        tally.write_seconds += t.write_seconds
        tally.digests.update(t.digests)
        tally.pending.update(t.pending)
        tally.unreadable.extend(t.unreadable)
    return tally


def _concatenate(reads: list[PartRead], snapshot: Path) -> None:
    """The parts' rows, in part order, as one file at ``snapshot`` (row group by row group: memory stays bounded).
    A snapshot already there is the same rows (its name is the objects' content hash): a rerun after a kill."""
    if snapshot.is_file():
        for r in reads:
            Path(r.path).unlink(missing_ok=True)
        return
    if len(reads) == 1:
        os.replace(reads[0].path, snapshot)
        return
    partial = snapshot.with_name(f".observe-{os.getpid()}-{time.time_ns()}.parquet")
    try:
        with pq.ParquetWriter(partial, RAW_SCHEMA, compression="zstd", compression_level=1,
                              use_dictionary=DICTIONARY_COLUMNS) as writer:
            for r in reads:
                part = pq.ParquetFile(r.path)
                for group in range(part.num_row_groups):
                    writer.write_table(part.read_row_group(group), row_group_size=ROW_GROUP_ROWS)
        os.chmod(partial, FILE_MODE)
        os.replace(partial, snapshot)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    for r in reads:
        Path(r.path).unlink(missing_ok=True)


def assemble_observation(plan: ObservePlan, reads: list[PartRead], state_dir: str | Path,
                         commit: bool = False) -> Observation:
    """One raw snapshot ``<state>/raw/<hash>.raw.parquet`` of the parts, in key order, and its Observation."""
    state, feedback = Path(state_dir), plan.feedback
    fed = {"feedback_events": feedback.events, "feedback_quarantined": feedback.quarantined,
           "feedback_table_uri": feedback.table_uri}
    seconds = dict(plan.seconds)
    if not plan.parts and not plan.unsafe:
        return Observation(source_uri=plan.source_uri, new_data=False, objects_skipped=plan.skipped,
                           objects_ignored=plan.ignored, seconds=seconds, **fed,
                           message=f"no new data in {plan.source_uri}: {plan.skipped} objects already processed, "
                                   f"{plan.ignored} ignored" + _feedback_note(feedback))
    tally = _merged(reads)
    for ref, dt, reason in plan.unsafe:
        tally.quarantine(ref, dt, f"unreadable_object: {reason}")
    content_hash = _content_hash(tally.digests)
    tag = content_hash[:16]
    snapshot = raw_dir(state) / f"{tag}.raw.parquet"
    if reads:
        _concatenate(reads, snapshot)
    else:  # every new object unsafe: an empty snapshot
        pq.write_table(RAW_SCHEMA.empty_table(), snapshot)
        os.chmod(snapshot, FILE_MODE)
    for r in reads:
        phases = _phase_seconds(r.tally, r.loop_seconds, r.in_processes)
        seconds.update({k: seconds.get(k, 0.0) + v for k, v in phases.items()})
    object_quarantine, pending = _write_side_files(state, tag, tally)
    partitions = sorted({dt for part in plan.parts for _, dt in part} | {dt for _, dt, _ in plan.unsafe})
    observation = Observation(
        source_uri=plan.source_uri, new_data=True, snapshot_uri=str(snapshot), snapshot_hash=content_hash,
        rows=tally.rows, objects_read=len(tally.digests), objects_quarantined=len(tally.unreadable),
        objects_skipped=plan.skipped, objects_ignored=plan.ignored, bytes_read=tally.bytes_read,
        partitions=partitions, parts=len(reads), part_workers=len({r.worker for r in reads}),
        object_quarantine_uri=str(object_quarantine) if object_quarantine else None,
        manifest_pending_uri=str(pending), seconds={phase: round(s, 3) for phase, s in seconds.items()}, **fed,
        message=f"read {tally.rows} rows from {len(tally.digests)} objects in {len(partitions)} partitions"
                + (f"; {len(tally.unreadable)} unreadable objects quarantined" if tally.unreadable else "")
                + (f"; {tally.empty} empty objects (no rows)" if tally.empty else "") + _feedback_note(feedback),
    )
    if commit:
        commit_manifest(observation, state)
    return observation


def observe(source: SourceConfig, state_dir: str | Path, commit: bool = False, progress: bool = False) -> Observation:
    """Read every object of ``source`` not yet in the manifest into ``<state>/raw/<hash>.raw.parquet`` (owner-only:
    raw rows hold PII until validate scrubs them), here, in one part."""
    plan = plan_observation(source, state_dir)
    reads = [read_part(source, state_dir, plan.plan_id, k, part, progress) for k, part in enumerate(plan.parts)]
    return assemble_observation(plan, reads, state_dir, commit)


def _feedback_note(feedback: FeedbackObservation) -> str:
    if not (feedback.events or feedback.quarantined or feedback.errors):
        return ""
    return (f"; {feedback.events} feedback events ({feedback.requests} requests with feedback)"
            + (f", {feedback.quarantined} invalid feedback lines quarantined" if feedback.quarantined else "")
            + (f", {len(feedback.errors)} feedback objects unreadable (read again next time)"
               if feedback.errors else ""))


class _NoProgress:
    def advance(self) -> None: ...
    def close(self) -> None: ...


class _ProgressBar:
    def __init__(self, total: int):
        from rich.progress import Progress

        self.progress = Progress(transient=True)
        self.progress.start()
        self.bar = self.progress.add_task("observe", total=total)

    def advance(self) -> None:
        self.progress.advance(self.bar)

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int) -> _NoProgress | _ProgressBar:
    return _ProgressBar(total) if enabled and total > 1 else _NoProgress()


# ---------------------------------------------------------------- tasks




@task(name="observe_logs", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient_io)
def observe_logs(source: SourceConfig, state_dir: str | Path) -> Observation:
    """Read the new log objects of ``source`` into a raw snapshot (manifest committed later by ``commit_observed``)."""
    return observe(source, state_dir, commit=False)


@task(name="plan_observation", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient_io)
def plan_logs(source: SourceConfig, state_dir: str | Path) -> ObservePlan:
    """List the new log objects of ``source`` in parts of ``source.part_bytes`` (each part: one ``read_log_part``)."""
    return plan_observation(source, state_dir, source.part_bytes)


@task(name="read_log_part", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient_io)
def read_log_part(source: SourceConfig, state_dir: str | Path, plan: ObservePlan, index: int) -> PartRead:
    """Read part ``index`` of ``plan`` (on whichever worker the flow's task runner picks; the state dir is shared)."""
    return read_part(source, state_dir, plan.plan_id, index, plan.parts[index])


@task(name="assemble_observation")
def assemble_logs(plan: ObservePlan, reads: list[PartRead], state_dir: str | Path) -> Observation:
    """The parts' rows as the night's raw snapshot (manifest committed later by ``commit_observed``)."""
    return assemble_observation(plan, reads, state_dir, commit=False)


@task(name="commit_observed", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_transient_io)
def commit_observed(observation: Observation, state_dir: str | Path) -> int:
    """Mark the observed objects as processed, once their snapshot passed validation."""
    return commit_manifest(observation, state_dir)
