"""Delayed feedback: events in ``<source>/_feedback/dt=YYYY-MM-DD/*.jsonl[.gz]``, folded into one table by request id.

The gateway's ``POST /v1/feedback`` writes one event per label, partitioned by the day it arrived::

    {"event_id", "request_id", "received_at", "timestamp", "thumbs"?, "resolved"?, "escalated"?, "edited"?,
     "comment"?, "kpi"?: {"<name>": number | bool}}

The folder starts with ``_``, so observe never takes an event for an interaction. ``observe_feedback`` (called by
the observe stage every night, whether or not new interactions arrived) reads the objects not yet in its own
manifest (``<state>/feedback/manifest.json``), appends their events to ``<state>/feedback/events/<hash>.parquet``
and rebuilds ``<state>/feedback/table.parquet``: one row per request id, each field the value of the latest event
that gave it (by event ``timestamp``, then arrival, then event id), ``kpi`` values as ``kpi_<name>`` columns. A
line that is not a valid event is quarantined with its reason in ``<state>/quarantine/feedback-<hash>.jsonl``.

The score stage joins the table onto every row it reads (this night's and the earlier nights' history the reward
model learns from: ``join_feedback``), so a label that arrives days later reaches its interaction whichever night
that was observed in. An event whose request id matches no interaction observed so far is quarantined
(``unknown:request_id``) by ``quarantine_unknown``, and stays in the table: should its interaction arrive later
(a gateway replica that flushed late), a later night still joins it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from flywheel.config.data import SourceConfig
from flywheel.logformats import UnreadableObject, jsonl_bytes
from flywheel.quarantine import write_private
from flywheel.sources import log_partition, open_source, unsafe_key

FEEDBACK_DIR = "_feedback"
FIELDS = ("thumbs", "resolved", "escalated", "edited", "comment")
EVENT_COLUMNS = ["event_id", "request_id", "received_at", "timestamp", *FIELDS, "kpi", "source_object"]


def feedback_source(source: SourceConfig) -> SourceConfig:
    """The feedback partitions of ``source``: ``<uri>/_feedback``."""
    return source.model_copy(update={"uri": source.uri.rstrip("/") + "/" + FEEDBACK_DIR})


def event_problem(event) -> str | None:
    """Why a stored event line is not a valid event (a quarantine reason), or None."""
    from flywheel.gateway.rows import BadRequest, check_feedback

    if not isinstance(event, dict):
        return "not_an_object"
    for name in ("event_id", "received_at"):
        if not isinstance(event.get(name), str) or not event[name]:
            return f"missing:{name}"
    try:
        check_feedback({k: v for k, v in event.items() if k not in ("event_id", "received_at")}, "event")
    except BadRequest as e:
        return "invalid:" + str(e).removeprefix("event.").split(":")[0] + f" ({e})"
    return None


@dataclass
class FeedbackObservation:
    events: int = 0  # new valid events read this time
    objects_read: int = 0
    quarantined: int = 0  # lines that were not valid events
    quarantine_uri: str | None = None
    table_uri: str | None = None
    requests: int = 0  # request ids in the folded table
    errors: list[str] = field(default_factory=list)  # objects that could not be read (read again next time)


def _paths(state_dir: str | Path) -> tuple[Path, Path, Path]:
    root = Path(state_dir) / "feedback"
    return root / "manifest.json", root / "events", root / "table.parquet"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _parse(key: str, data: bytes, events: list[dict], bad: list[dict]) -> None:
    for i, line in enumerate(jsonl_bytes(key, data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad.append({"source_object": key, "source_line": i, "reasons": ["malformed_json"],
                        "raw": line.decode("utf-8", "backslashreplace")[:2000]})
            continue
        problem = event_problem(event)
        if problem:
            bad.append({"source_object": key, "source_line": i, "reasons": [problem],
                        "request_id": event.get("request_id") if isinstance(event, dict) else None,
                        "raw": line.decode("utf-8", "backslashreplace")[:2000]})
            continue
        kpi = event.get("kpi")
        events.append({"event_id": event["event_id"], "request_id": event["request_id"],
                       "received_at": event["received_at"], "timestamp": event.get("timestamp") or
                       event["received_at"], **{f: event.get(f) for f in FIELDS},
                       "kpi": orjson.dumps(kpi).decode() if kpi else None, "source_object": key})


def observe_feedback(source: SourceConfig, state_dir: str | Path) -> FeedbackObservation:
    """Read the new feedback objects of ``source`` into the event store and rebuild the feedback table."""
    import pandas as pd

    manifest_path, events_dir, table_path = _paths(state_dir)
    manifest = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else {}
    reader = open_source(feedback_source(source))
    try:
        refs = reader.list()
    except FileNotFoundError:  # no feedback yet
        refs = []
    out, events, bad, digests = FeedbackObservation(), [], [], []
    for ref in refs:
        if log_partition(ref.key) is None or manifest.get(ref.key) == ref.etag or unsafe_key(ref.key):
            continue
        try:
            data = reader.read(ref)
            _parse(ref.key, data, events, bad)
        except (UnreadableObject, OSError) as e:
            out.errors.append(f"{ref.key}: {e}"[:300])
            continue
        manifest[ref.key] = ref.etag
        digests.append(f"{ref.key}\t{hashlib.sha256(data).hexdigest()}")
        out.objects_read += 1
    tag = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
    if bad:
        path = Path(state_dir) / "quarantine" / f"feedback-{tag}.jsonl"
        write_private(path, b"".join(orjson.dumps(b) + b"\n" for b in bad))
        out.quarantined, out.quarantine_uri = len(bad), str(path)
    if events:
        frame = pd.DataFrame(events, columns=EVENT_COLUMNS)
        events_dir.mkdir(parents=True, exist_ok=True)
        partial = events_dir / f".{tag}.tmp{os.getpid()}"
        frame.astype({"thumbs": "Int8", "resolved": "boolean", "escalated": "boolean", "edited": "boolean"}
                     ).to_parquet(partial, index=False)
        os.replace(partial, events_dir / f"{tag}.parquet")
        out.events = len(events)
    if digests:
        _write_atomic(manifest_path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if events or not table_path.exists():
        table = fold_events(read_events(state_dir))
        partial = table_path.with_name(f".table.tmp{os.getpid()}")
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(partial, index=False)
        os.replace(partial, table_path)
    out.table_uri = str(table_path)
    out.requests = len(load_feedback_table(state_dir))
    return out


def read_events(state_dir: str | Path):
    """Every stored event (each event id once)."""
    import pandas as pd

    _, events_dir, _ = _paths(state_dir)
    frames = [pd.read_parquet(p) for p in sorted(events_dir.glob("*.parquet"))]
    if not frames:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    return pd.concat(frames, ignore_index=True).drop_duplicates("event_id", keep="first")


def fold_events(events):
    """One row per request id; each field (``kpi`` keys as ``kpi_<name>``) from the latest event that gave it.

    >>> import pandas as pd
    >>> ev = pd.DataFrame([{"event_id": "a", "request_id": "r1", "received_at": "2026-11-24T10:00:00Z",
    ...                     "timestamp": "2026-11-24T10:00:00Z", "thumbs": 1, "resolved": None, "kpi": None},
    ...                    {"event_id": "b", "request_id": "r1", "received_at": "2026-11-27T10:00:00Z",
    ...                     "timestamp": "2026-11-27T10:00:00Z", "thumbs": None, "resolved": False,
    ...                     "kpi": '{"csat": 4}'}])
    >>> row = fold_events(ev).iloc[0]
    >>> int(row["thumbs"]), bool(row["resolved"]), float(row["kpi_csat"]), int(row["feedback_events"])
    (1, False, 4.0, 2)
    """
    import pandas as pd

    if events.empty:
        return pd.DataFrame(columns=["request_id", *FIELDS, "feedback_events", "feedback_last_received_at"])
    events = events.sort_values(["timestamp", "received_at", "event_id"], kind="stable").reset_index(drop=True)
    kpis = pd.DataFrame([orjson.loads(k) if isinstance(k, str) else {} for k in events["kpi"]], index=events.index)
    kpis.columns = [f"kpi_{c}" for c in kpis.columns]
    wide = pd.concat([events[["request_id", *[f for f in FIELDS if f in events.columns]]], kpis], axis=1)
    folded = wide.groupby("request_id", sort=True).last()  # last non-null value of each column: latest wins
    folded["feedback_events"] = events.groupby("request_id").size()
    folded["feedback_last_received_at"] = events.groupby("request_id")["received_at"].max()
    return folded.reset_index()


def load_feedback_table(state_dir: str | Path):
    """The folded table (empty when no feedback was ever observed)."""
    import pandas as pd

    _, _, table_path = _paths(state_dir)
    if not table_path.exists():
        return pd.DataFrame(columns=["request_id", *FIELDS])
    return pd.read_parquet(table_path)


def table_hash(state_dir: str | Path) -> str | None:
    _, _, table_path = _paths(state_dir)
    return hashlib.sha256(table_path.read_bytes()).hexdigest() if table_path.exists() else None


def join_feedback(df, table):
    """``df`` with each row's feedback replaced by the table's values where it has them; (frame, rows joined).

    A field the table lacks for a request keeps the row's logged value; ``kpi_<name>`` columns are added.
    """
    if table is None or len(table) == 0 or "request_id" not in df.columns:
        return df, 0
    ids = df["request_id"].astype(str)
    indexed = table.set_index("request_id")
    hit = ids.isin(indexed.index)
    if not hit.any():
        return df, 0
    out = df.copy()
    matched = indexed.loc[ids[hit].to_numpy()]
    for column in indexed.columns:
        if column.startswith("feedback_"):
            continue
        values = matched[column].to_numpy()
        present = matched[column].notna().to_numpy()
        if column not in out.columns:
            out[column] = None
        if out[column].dtype.kind in "biu" or str(out[column].dtype) in ("Int8", "Int64", "boolean"):
            out[column] = out[column].astype(object)
        rows = out.index[hit.to_numpy()][present]
        out.loc[rows, column] = values[present]
    return out, int(hit.sum())


def known_request_ids(state_dir: str | Path, extra=None) -> set[str]:
    """Request ids of every validated clean snapshot under ``state_dir`` (and ``extra``)."""
    import pyarrow.parquet as pq

    known = set(map(str, extra)) if extra is not None else set()
    for path in sorted((Path(state_dir) / "snapshots").glob("*.clean.parquet")):
        known.update(map(str, pq.read_table(path, columns=["request_id"])["request_id"].to_pylist()))
    return known


def quarantine_unknown(state_dir: str | Path, table, known: set[str], tag: str) -> tuple[int, str | None]:
    """Quarantine the feedback of request ids matching no observed interaction; (count, quarantine file)."""
    if table is None or len(table) == 0:
        return 0, None
    unknown = table[~table["request_id"].astype(str).isin(known)]
    if unknown.empty:
        return 0, None
    path = Path(state_dir) / "quarantine" / f"feedback-unknown-{tag}.jsonl"
    lines = []
    for row in unknown.to_dict("records"):
        fields = {k: v for k, v in row.items() if k not in ("request_id",) and v is not None and v == v}
        lines.append(orjson.dumps({"request_id": row["request_id"], "reasons": ["unknown:request_id"],
                                   "detail": "no interaction with this request_id has been observed",
                                   "feedback": fields}, default=str) + b"\n")
    write_private(path, b"".join(lines))
    return len(unknown), str(path)
