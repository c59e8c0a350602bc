"""KPI graders: logged production signals (thumbs, resolved, escalated, edited, accepted) mapped to rewards.

They exist only for completions production actually served, so they score logged rows (the reward model's
labels, the report), never new samples. A row with none of the mapped fields gets NaN: missing, not zero.

>>> kpi = kpi_grader({"resolved": 1.0, "escalated": -1.0, "thumbs": 1.0})
>>> kpi([[]] * 3, ["a", "b", "c"], resolved=[True, False, None], escalated=[False, True, None], thumbs=[1, None, None])
[2.0, -1.0, nan]
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

DEFAULT_KPI = {"resolved": 1.0, "escalated": -1.0, "thumbs": 1.0}


def _value(x: Any) -> float | None:
    """A feedback value as a number; None/NaN/NA = absent. Booleans map to 1/0, thumbs keep their sign."""
    if x is None:
        return None
    try:
        if x != x:  # NaN, pandas NA raises TypeError below
            return None
    except TypeError:
        return None
    if isinstance(x, str):
        low = x.strip().lower()
        if low in {"true", "yes", "1"}:
            return 1.0
        if low in {"false", "no", "0"}:
            return 0.0
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def kpi_grader(mapping: dict[str, float] | None = None) -> Callable[..., list[float]]:
    """``fn(prompts, completions, **feedback_columns)``: Σ weight·value over the mapped fields present, NaN if none."""
    mapping = dict(mapping or DEFAULT_KPI)
    if not mapping:
        raise ValueError("kpi params: map at least one feedback field to a weight, e.g. {resolved: 1}")

    def kpi(prompts: list[list[dict]], completions: list[str], **context: Any) -> list[float]:
        out = []
        for i in range(len(completions)):
            total, present = 0.0, False
            for field, weight in mapping.items():
                column = context.get(field)
                v = _value(column[i]) if column is not None else None
                if v is not None:
                    total, present = total + float(weight) * v, True
            out.append(total if present else math.nan)
        return out
    return kpi


def binary_label(row: dict[str, Any], fields: list[str], stepped_in: list[str] | tuple[str, ...] = ()) -> float | None:
    """Pointwise good/bad label: bad (0) when a ``stepped_in`` flag is true (escalated, edited); else the first
    present of ``fields`` (booleans; thumbs > 0 = good); else None.

    >>> binary_label({"resolved": None, "thumbs": -1}, ["resolved", "thumbs"])
    0.0
    >>> binary_label({"thumbs": 1, "edited": True}, ["resolved", "thumbs"], ["escalated", "edited"])
    0.0
    """
    if any((_value(row.get(flag)) or 0.0) > 0 for flag in stepped_in):
        return 0.0
    for field in fields:
        v = _value(row.get(field))
        if v is not None:
            return 1.0 if v > 0 else 0.0
    return None
