"""Composite reward: a weighted sum of normalised components; the spec is hashed for lineage.

    total = (W / W_present) · Σ_{i present} w_i · (x_i - μ_i) / σ_i      (μ=0, σ=1 unless normalize=zscore)

A component that is missing for a row (NaN: no feedback, failed judge verdict) drops out and the present
weights are rescaled (``missing="renormalize"``), or the total is NaN (``missing="nan"``). Scoring returns
every component, not only the total.

>>> c = Composite([ComponentSpec("a", "rule", 1.0), ComponentSpec("b", "rule", 3.0)],
...               {"a": lambda p, c, **k: [1.0, 0.0], "b": lambda p, c, **k: [0.0, float("nan")]})
>>> c([[], []], ["x", "y"])
[1.0, 0.0]
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Grader = Callable[..., list[float]]
OFFLINE_ONLY = {"kpi"}  # kinds that cannot score new samples


@dataclass
class ComponentSpec:
    name: str
    kind: str
    weight: float = 1.0
    normalize: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    mean: float = 0.0
    std: float = 1.0

    def fit(self, values: np.ndarray) -> None:
        """Fit μ, σ of zscore normalisation on reference values (NaN ignored)."""
        v = values[~np.isnan(values)]
        if self.normalize == "zscore" and len(v) > 1:
            self.mean, self.std = float(v.mean()), float(v.std()) or 1.0

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std if self.normalize == "zscore" else values


def spec_hash(spec: dict) -> str:
    """sha256 of the canonical JSON of a reward spec (components, weights, stats, model and rubric hashes)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def weighted_total(columns: dict[str, np.ndarray], specs: list[ComponentSpec],
                   missing: str = "renormalize") -> np.ndarray:
    """Weighted sum of the normalised columns, with missing components handled as documented above."""
    if not specs:
        raise ValueError("weighted_total: no components")
    n = len(next(iter(columns.values())))
    acc, w_present = np.zeros(n), np.zeros(n)
    w_all = sum(s.weight for s in specs)
    for s in specs:
        x = s.transform(np.asarray(columns[s.name], float))  # (n,)
        present = ~np.isnan(x)
        acc += np.where(present, s.weight * np.nan_to_num(x), 0.0)
        w_present += np.where(present, s.weight, 0.0)
    if missing == "nan":
        return np.where(w_present == w_all, acc, np.nan)
    if w_all == 0:
        return acc
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w_present > 0, acc * (w_all / w_present), np.nan)


class Composite:
    """Graders + specs → every component's column and the total."""

    def __init__(self, specs: list[ComponentSpec], graders: dict[str, Grader], missing: str = "renormalize"):
        unknown = [s.name for s in specs if s.name not in graders]
        if unknown:
            raise ValueError(f"composite: no grader for components {unknown}")
        self.specs, self.graders, self.missing = specs, graders, missing

    def score(self, prompts: list[list[dict]], completions: list[str], **context: Any) -> dict[str, np.ndarray]:
        """{component name: raw scores (n,)} plus "total" (normalised, weighted)."""
        columns: dict[str, np.ndarray] = {}
        for s in self.specs:
            values = np.asarray(self.graders[s.name](prompts, completions, **context), float)
            if values.shape != (len(completions),):
                raise ValueError(f"component {s.name!r}: returned {values.shape}, expected ({len(completions)},)")
            columns[s.name] = values
        columns["total"] = weighted_total(columns, self.specs, self.missing)
        return columns

    def __call__(self, prompts: list[list[dict]], completions: list[str], **context: Any) -> list[float]:
        """The online reward ``fn(prompts, completions) -> list[float]``."""
        total = self.score(prompts, completions, **context)["total"]
        return [float(x) if not math.isnan(x) else math.nan for x in total]

    def online(self) -> Composite:
        """Same composite without the components that cannot score new samples (KPI)."""
        specs = [s for s in self.specs if s.kind not in OFFLINE_ONLY]
        return Composite(specs, {s.name: self.graders[s.name] for s in specs}, self.missing)


def specs_to_json(specs: list[ComponentSpec]) -> list[dict]:
    return [asdict(s) for s in specs]
