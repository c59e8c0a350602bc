"""Rows accepted by earlier batches, so that a row logged again on a later night is quarantined, not trained on twice.

A log shipper that re-sends yesterday's file under a new name, or an object rewritten with its old lines kept, brings
back rows an earlier night already validated. validate quarantines them as ``duplicate:earlier_batch``.

- A row's key is a 64-bit hash of (request_id, timestamp): the same model call logged again. (Within one batch the
  contract's ``duplicate:request_id`` check compares request ids alone.)
- validate writes the keys of a snapshot's clean rows to ``<state>/ids/<tag>.npy``. They count once the snapshot is
  committed: a manifest entry (``<state>/manifest/<source>.json``) names it as its ``snapshot``. A batch stopped by a
  gate and read again after the fix is therefore never a duplicate of itself.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa


def row_keys(table: pa.Table) -> np.ndarray:
    """(rows,) uint64 key of each row's (request_id, timestamp); 0 where either is missing."""
    import pandas as pd

    ids, ts = table["request_id"], table["timestamp"].cast(pa.int64())
    missing = ids.is_null().to_numpy() | ts.is_null().to_numpy()
    frame = pd.DataFrame({"id": np.asarray(ids.fill_null("").to_numpy(zero_copy_only=False), dtype=object),
                          "ts": ts.fill_null(0).to_numpy().astype(np.int64)})
    keys = pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64, copy=True)
    keys[missing] = 0
    return keys


def committed_snapshots(state_dir: str | Path) -> set[str]:
    """Tags of the snapshots whose objects some manifest under ``state_dir`` marks as processed."""
    tags = set()
    for path in (Path(state_dir) / "manifest").glob("*.json"):
        if not path.name.startswith("pending-"):
            objects = orjson.loads(path.read_bytes()).get("objects", {})
            tags.update(entry["snapshot"] for entry in objects.values() if entry.get("snapshot"))
    return tags


def replayed(state_dir: str | Path, tag: str, keys: np.ndarray) -> np.ndarray:
    """(rows,) bool: the row's key is among the clean rows of a committed snapshot other than ``tag``."""
    folder = Path(state_dir) / "ids"
    earlier = [np.load(folder / f"{t}.npy") for t in sorted(committed_snapshots(state_dir) - {tag})
               if (folder / f"{t}.npy").exists()]
    if not earlier:
        return np.zeros(len(keys), dtype=bool)
    return (keys != 0) & np.isin(keys, np.concatenate(earlier))


def record(state_dir: str | Path, tag: str, keys: np.ndarray) -> Path:
    """Write the keys of snapshot ``tag``'s clean rows (atomically); they count once the snapshot is committed."""
    path = Path(state_dir) / "ids" / f"{tag}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(partial, np.unique(keys[keys != 0]))
    os.replace(partial, path)
    return path
