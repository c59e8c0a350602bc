"""Reading a clean snapshot (Parquet, ``flywheel.schema`` columns) back as rows, and which logged answers worked.

``good_examples`` is rejection sampling from production: the logged answers whose signals say they worked
(``resolved`` true, or thumbs up where ``resolved`` is missing; never one a human had to step in on: escalated,
edited). The day-0 warm start, the
reward model's labels and the efficacy benchmark all read snapshots through here; ``holdout_split`` is the
time-based cut between the rows the train stage learns from and the rows the evaluate stage judges on.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.schema import STEPPED_IN_FIELDS

Example = tuple[list[dict], str]  # (prompt messages, completion)


def rows_from_snapshot(path: str | Path) -> list[dict]:
    """Rows of a snapshot as dicts, with ``messages`` parsed from JSON."""
    import pandas as pd

    rows = pd.read_parquet(path).to_dict("records")
    for r in rows:
        if isinstance(r.get("messages"), str):
            r["messages"] = json.loads(r["messages"])
    return rows


def _signal(row: dict, key: str) -> Any:
    """A feedback signal of a row (flat column, or inside a ``feedback`` dict); None when missing (NA/NaN too)."""
    v = row.get(key)
    if v is None and isinstance(row.get("feedback"), dict):
        v = row["feedback"].get(key)
    if v is None or (isinstance(v, float) and v != v) or type(v).__name__ == "NAType":
        return None
    return v


def is_good(row: dict) -> bool:
    """Production signals say this answer worked: resolved (or, without resolved, thumbs up), and no human stepped in
    (``flywheel.schema.STEPPED_IN_FIELDS``: not escalated, not edited)."""
    if any(_signal(row, flag) is True for flag in STEPPED_IN_FIELDS):
        return False
    resolved = _signal(row, "resolved")
    if resolved is not None:
        return bool(resolved)
    thumbs = _signal(row, "thumbs")
    return thumbs is not None and thumbs > 0


def all_examples(rows: Iterable[dict]) -> list[Example]:
    return [(r["messages"], r["completion"]) for r in rows]


def good_examples(rows: Iterable[dict]) -> list[Example]:
    return [(r["messages"], r["completion"]) for r in rows if is_good(r)]


def holdout_split(timestamps: Sequence, fraction: float) -> np.ndarray:
    """Boolean mask of the rows held out for evaluation: the newest ``fraction`` by timestamp (ties at the cut go too).

    The train stage never trains on these rows, the evaluate stage judges on them.

    >>> holdout_split([3, 1, 2, 5, 4], 0.4).tolist()
    [False, False, False, True, True]
    """
    ts = np.asarray(timestamps)
    if len(ts) == 0:
        return np.zeros(0, dtype=bool)
    k = max(1, math.ceil(len(ts) * fraction))
    cut = np.sort(ts)[len(ts) - k]
    return ts >= cut
