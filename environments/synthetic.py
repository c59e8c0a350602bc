"""Rejection sampling: turn collected trajectories into a synthetic chat dataset with a data card.

Design
------
``read_trajectories(path)`` reads the JSONL that ``environments.collect.collect`` writes (each line must have
``task_id``, ``trial``, ``reward`` and ``messages``; errors name the file and line). ``select`` filters them:
with ``threshold`` only trajectories whose reward is at least the threshold are kept (``None``: no reward
filter); with ``best_of_k`` only the best remaining trajectory of each task is kept (ties go to the lowest
trial). It returns a ``Selection`` that remembers the whole pool as well as what it kept, so the data card
can describe both and its counts always come from the same records as the file.

``export(selection, out_dir, source, filters, model_version)`` writes three files atomically:

``dataset.jsonl``  one chat per line: ``messages`` (OpenAI format, ``tool_calls`` on assistant messages and
                   ``tool`` messages kept as collected), ``task_id``, ``trial`` and ``reward``. Trailing
                   ``user`` messages after the last assistant turn (the simulated user's ``###STOP###``) are
                   dropped: nothing is learned from them.
``card.json``      source, source tasks, counts (trajectories in, kept, per task in and kept), reward
                   distribution (min / mean / max and a 10-bin histogram over [0, 1]) of the kept and of all
                   trajectories, filters, model version(s), created_at (UTC, ISO 8601).
``card.md``        the same card for people.

An empty selection is valid: an empty ``dataset.jsonl`` and a card with zero counts and ``null`` statistics.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from environments.tools import assistant_text

REQUIRED_KEYS = ("task_id", "trial", "reward", "messages")
HISTOGRAM_BINS = 10  # equal bins over [0, 1]; rewards outside it are counted in the end bins


def _check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: trajectory lacks {missing}")
    if not isinstance(record["reward"], int | float) or isinstance(record["reward"], bool):
        raise ValueError(f"{where}: reward must be a number, got {record['reward']!r}")
    if not isinstance(record["messages"], list):
        raise ValueError(f"{where}: messages must be a list")
    return record


def read_trajectories(path: str | Path) -> list[dict[str, Any]]:
    """The trajectories of a ``collect`` JSONL file (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trajectories file")
    out = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON: {exc}") from exc
            out.append(_check_record(record, f"{path}, line {number}"))
    return out


@dataclass
class Selection:
    """The kept trajectories, the pool they were chosen from, and the filters that chose them."""

    kept: list[dict[str, Any]]
    pool: list[dict[str, Any]]
    filters: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kept)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.kept)


def select(trajectories: Iterable[dict[str, Any]], threshold: float | None = None,
           best_of_k: bool = False) -> Selection:
    """Keep trajectories with ``reward >= threshold`` (if given), then (``best_of_k``) the best per task."""
    pool = [_check_record(r, f"trajectory #{i}") for i, r in enumerate(trajectories)]
    kept = [r for r in pool if threshold is None or r["reward"] >= threshold]
    if best_of_k:
        best: dict[str, dict[str, Any]] = {}
        for record in kept:
            current = best.get(record["task_id"])
            if current is None or record["reward"] > current["reward"] or (
                    record["reward"] == current["reward"] and record["trial"] < current["trial"]):
                best[record["task_id"]] = record
        kept = list(best.values())
    kept.sort(key=lambda r: (str(r["task_id"]), r["trial"]))
    return Selection(kept=kept, pool=pool, filters={"threshold": threshold, "best_of_k": best_of_k})


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trajectory as a training chat: every message up to the last assistant turn and its tool results."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    end = len(messages)
    while end > last + 1 and messages[end - 1].get("role") == "user":
        end -= 1
    return [dict(m) for m in messages[:end]]


def turn_examples(chats: Iterable[list[dict[str, Any]]]) -> list[tuple[list[dict[str, Any]], str]]:
    """Supervised examples of chats: per assistant turn (the messages before it, the text the model writes for it,
    ``environments.tools.assistant_text``), the form ``models.sft`` and the tiny base's fitting take."""
    examples = []
    for messages in chats:
        for i, message in enumerate(messages):
            if message.get("role") == "assistant":
                examples.append(([dict(m) for m in messages[:i]], assistant_text(message)))
    return examples


def reward_stats(rewards: list[float]) -> dict[str, Any]:
    """min / mean / max (``None`` when empty) and a histogram of ``HISTOGRAM_BINS`` equal bins over [0, 1]."""
    counts = [0] * HISTOGRAM_BINS
    for reward in rewards:
        counts[min(max(int(reward * HISTOGRAM_BINS), 0), HISTOGRAM_BINS - 1)] += 1
    bins = [{"lo": round(i / HISTOGRAM_BINS, 6), "hi": round((i + 1) / HISTOGRAM_BINS, 6), "count": c}
            for i, c in enumerate(counts)]
    if not rewards:
        return {"count": 0, "min": None, "mean": None, "max": None, "histogram": bins}
    return {"count": len(rewards), "min": min(rewards), "mean": sum(rewards) / len(rewards), "max": max(rewards),
            "histogram": bins}


def _model_versions(pool: list[dict[str, Any]]) -> str | list[str] | None:
    versions = sorted({str(r["model_version"]) for r in pool if r.get("model_version") is not None})
    if not versions:
        return None
    return versions[0] if len(versions) == 1 else versions


def build_card(selection: Selection, source: str, filters: dict[str, Any] | None = None,
               model_version: str | list[str] | None = None) -> dict[str, Any]:
    """The data card of ``selection`` (see the module docstring); ``model_version`` defaults to the pool's."""
    per_task_in = Counter(str(r["task_id"]) for r in selection.pool)
    per_task_kept = Counter(str(r["task_id"]) for r in selection.kept)
    return {
        "source": source,
        "source_tasks": sorted(per_task_in),
        "counts": {"trajectories_in": len(selection.pool), "kept": len(selection.kept),
                   "tasks_in": len(per_task_in), "tasks_kept": len(per_task_kept),
                   "per_task": {t: {"in": per_task_in[t], "kept": per_task_kept.get(t, 0)}
                                for t in sorted(per_task_in)}},
        "rewards": {"kept": reward_stats([float(r["reward"]) for r in selection.kept]),
                    "all": reward_stats([float(r["reward"]) for r in selection.pool])},
        "filters": {**selection.filters, **(filters or {})},
        "model_version": model_version if model_version is not None else _model_versions(selection.pool),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def card_markdown(card: dict[str, Any]) -> str:
    counts, rewards = card["counts"], card["rewards"]
    lines = [f"# Synthetic chat dataset from `{card['source']}`", "",
             f"- created: {card['created_at']}", f"- model version: {card['model_version']}",
             f"- filters: `{json.dumps(card['filters'], sort_keys=True)}`",
             f"- trajectories in: {counts['trajectories_in']} over {counts['tasks_in']} tasks",
             f"- kept: {counts['kept']} over {counts['tasks_kept']} tasks", "",
             "## Rewards", "", "| set | count | min | mean | max |", "|---|---:|---:|---:|---:|"]
    for name in ("kept", "all"):
        s = rewards[name]
        lines.append(f"| {name} | {s['count']} | {_fmt(s['min'])} | {_fmt(s['mean'])} | {_fmt(s['max'])} |")
    lines += ["", "| reward bin | kept | all |", "|---|---:|---:|"]
    for kept_bin, all_bin in zip(rewards["kept"]["histogram"], rewards["all"]["histogram"]):
        lines.append(f"| [{kept_bin['lo']:.1f}, {kept_bin['hi']:.1f}) | {kept_bin['count']} | {all_bin['count']} |")
    lines += ["", "## Per task", "", "| task | in | kept |", "|---|---:|---:|"]
    lines += [f"| {task} | {c['in']} | {c['kept']} |" for task, c in counts["per_task"].items()]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def export(selected: Selection | list[dict[str, Any]], out_dir: str | Path, source: str,
           filters: dict[str, Any] | None = None, model_version: str | list[str] | None = None) -> dict[str, Any]:
    """Write ``dataset.jsonl``, ``card.json`` and ``card.md`` under ``out_dir``; returns the card.

    A plain list is taken as both the kept trajectories and the pool (nothing was filtered out).
    """
    if not isinstance(selected, Selection):
        records = [_check_record(r, f"trajectory #{i}") for i, r in enumerate(selected)]
        selected = Selection(kept=records, pool=records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": chat_messages(r["messages"]), "task_id": r["task_id"], "trial": r["trial"],
                         "reward": r["reward"]}, ensure_ascii=False) + "\n" for r in selected.kept]
    card = build_card(selected, source, filters, model_version)
    _write_atomic(out_dir / "dataset.jsonl", "".join(lines))
    _write_atomic(out_dir / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    _write_atomic(out_dir / "card.md", card_markdown(card))
    return card
