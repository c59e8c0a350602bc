"""Gold accuracy of an adapter on held-out demo prompts: the honest measure, outside the pipeline.

Only the demo and the efficacy benchmark use it: production has no gold answers. The pipeline itself never reads
``<logs>/_gold``; this module does, after the fact, to show whether the rewards led the policy to the truth.
"""
from __future__ import annotations

import random
from pathlib import Path

from demo.logs import DemoTask, load_gold
from flywheel.stats import wilson_ci


def heldout_gold(task: DemoTask, logs_dir: str | Path, day: str, fraction: float,
                 max_prompts: int | None = None) -> list[dict]:
    """The newest ``fraction`` of ``day``'s ``task`` requests (by time), defects excluded: the time split the
    pipeline holds out."""
    rows = [g for g in load_gold(logs_dir, [day]) if not g.get("defect")]
    foreign = sorted({str(g.get("kind")) for g in rows} - set(task.KINDS))
    if foreign:
        raise ValueError(f"logs_dir {logs_dir}: gold of {day} has kinds {foreign}, not of task {task.NAME} "
                         f"({', '.join(task.KINDS)}); were these logs generated for another task?")
    rows.sort(key=lambda g: g["request_id"])  # request ids are numbered in timestamp order within a day
    keep = rows[int(len(rows) * (1 - fraction)):]
    return keep[-max_prompts:] if max_prompts else keep


def fresh_gold(task: DemoTask, n: int, seed: int) -> list[dict]:
    """``n`` new ``task`` prompts (phrasings and ids the logs may not contain): messages, the gold fields and the
    right ``completion``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages, gold = task.make_prompt(rng)
        out.append({"messages": messages, **gold, "completion": task.gold_completion(gold)})
    return out


def paired_gain_ci(hits_a: list[bool], hits_b: list[bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % paired-bootstrap interval of accuracy(b) - accuracy(a), in points, over the same prompts."""
    if len(hits_a) != len(hits_b) or not hits_a:
        raise ValueError(f"paired_gain_ci: need two equal, non-empty hit lists; got {len(hits_a)} and {len(hits_b)}")
    rng = random.Random(seed)
    d = [int(b) - int(a) for a, b in zip(hits_a, hits_b)]
    n = len(d)
    gains = sorted(100 * sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (round(gains[int(0.025 * n_boot)], 2), round(gains[int(0.975 * n_boot) - 1], 2))


def score_answers(task: DemoTask, answers: list[str], gold: list[dict]) -> dict:
    """Accuracy (0-100) of ``answers`` against ``gold`` with a 95 % CI, overall and per kind of ``task``; ``hits``
    per prompt (for paired comparisons) and the first three answers next to their gold completion."""
    if len(answers) != len(gold):
        raise ValueError(f"score_answers: {len(answers)} answers for {len(gold)} gold records")
    hits = [task.is_correct(a, g) for a, g in zip(answers, gold)]
    per_kind = {}
    for kind in task.KINDS:
        idx = [i for i, g in enumerate(gold) if g["kind"] == kind]
        if idx:
            per_kind[kind] = round(100 * sum(hits[i] for i in idx) / len(idx), 1)
    k, n = sum(hits), len(hits)
    return {"accuracy": round(100 * k / max(n, 1), 2), "ci": wilson_ci(k, n), "n": n, "per_kind": per_kind,
            "hits": hits,
            "examples": [{"answer": a, "gold": g["completion"]} for a, g in list(zip(answers, gold))[:3]]}


def gold_accuracy(task: DemoTask, base_dir: str | Path, adapter_dir: str | Path | None, gold: list[dict],
                  max_new_tokens: int = 40) -> dict:
    """Greedy answers of base (+ adapter) to the ``gold`` prompts, scored by ``score_answers``."""
    from models.decoding import decode

    answers = decode(base_dir, adapter_dir, [g["messages"] for g in gold], max_new_tokens=max_new_tokens,
                     batch_size=64)
    return score_answers(task, answers, gold)
