"""Agreement of graders with a small set of human labels, and the judge-vs-reward-model policy.

With tens of human labels a reward model cannot be trained, but they can tell which rubric variant agrees
with people: accuracy and Cohen's κ on the binarised score (threshold fitted to the labels, reported), and
Spearman's ρ on the raw score. With thousands of feedback labels a reward model is trained instead.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 1-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's ρ (Pearson on average ranks); NaN when a side is constant.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
    0.8
    """
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return round(float(np.corrcoef(rx, ry)[0, 1]), 6)


def cohen_kappa(a, b) -> float:
    """Cohen's κ of two binary raters: (p_o - p_e) / (1 - p_e).

    >>> cohen_kappa([1, 1, 0, 0], [1, 1, 0, 1])
    0.5
    """
    a, b = np.asarray(a, int), np.asarray(b, int)
    p_o = float((a == b).mean())
    p_e = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return 1.0 if p_e == 1 else round((p_o - p_e) / (1 - p_e), 6)


def auc(scores, labels) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties count half (Mann-Whitney).

    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _ranks(s)
    return round(float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 6)


@dataclass
class Agreement:
    name: str
    n: int
    threshold: float  # grader scores >= threshold count as "good"
    accuracy: float
    kappa: float
    spearman: float


def agreement(name: str, scores, human, human_threshold: float = 0.5) -> Agreement:
    """Agreement of one grader with human labels; NaN scores (missing verdicts) are left out.

    The score threshold is the one maximising accuracy on these labels (the calibration).
    """
    s, h = np.asarray(scores, float), np.asarray(human, float)
    keep = ~np.isnan(s) & ~np.isnan(h)
    s, hb = s[keep], (h[keep] >= human_threshold).astype(int)
    if len(s) == 0:
        return Agreement(name, 0, math.nan, math.nan, math.nan, math.nan)
    candidates = np.unique(s)
    accs = [float(((s >= t).astype(int) == hb).mean()) for t in candidates]
    best = int(np.argmax(accs))
    t = float(candidates[best])
    return Agreement(name, len(s), t, round(accs[best], 6), cohen_kappa((s >= t).astype(int), hb),
                     spearman(s, h[keep]))


@dataclass
class CalibrationReport:
    best: str | None
    variants: list[Agreement]

    def to_dict(self) -> dict:
        return {"best": self.best, "variants": [asdict(a) for a in self.variants]}


def calibrate(variants: dict[str, list[float]], human: list[float], human_threshold: float = 0.5) -> CalibrationReport:
    """Agreement of every variant; the best is the highest κ (then Spearman)."""
    rows = [agreement(name, scores, human, human_threshold) for name, scores in variants.items()]

    def key(a: Agreement):
        return (-1e9 if math.isnan(a.kappa) else a.kappa, -1e9 if math.isnan(a.spearman) else a.spearman)
    scored = [a for a in rows if a.n > 0]
    return CalibrationReport(max(scored, key=key).name if scored else None, rows)


def choose_policy(policy: str, n_feedback_labels: int, min_labels: int) -> str:
    """'reward_model' or 'judge': ``auto`` trains a reward model only with enough feedback labels.

    >>> choose_policy("auto", 40, 200), choose_policy("auto", 3000, 200)
    ('judge', 'reward_model')
    """
    if policy != "auto":
        return policy
    return "reward_model" if n_feedback_labels >= min_labels else "judge"
