"""Realistic production logs for a demo task: the task-independent part of the generator.

A demo task (``DemoTask``) says what users ask, what the right answer is, what the production model answered and
what feedback users gave. ``generate_logs(task, out_dir, ...)`` writes what production would have logged under
``<out>/dt=YYYY-MM-DD/part-*.jsonl[.gz]|.parquet``, one object per model call:

- a ``defect_rate`` share of the lines are defects (malformed JSON, invalid UTF-8, missing fields, wrong types,
  duplicates, out-of-range values, oversized texts, PII). Each defect is recorded in ``<out>/_defects/<day>.jsonl``
  with the object, line, kind and the validate reason it must be quarantined with (or ``expect: "scrub"`` for PII);
- gold answers are written outside the partitions, ``<out>/_gold/<day>.jsonl``, so observe never reads them.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

DEFECT_KINDS = ("malformed", "missing_field", "wrong_type", "duplicate", "out_of_range", "oversized", "pii")
REQUIRED_FIELDS = ("request_id", "timestamp", "task", "model_version", "messages", "completion")
FORMATS = ("jsonl", "jsonl.gz", "parquet")


class DemoTask(Protocol):
    """One built-in demo task: its requests, gold answers, production model and user feedback.

    ``gold`` is a dict with at least ``"kind"`` (one of ``KINDS``) plus the fields of the right answer; it is what
    ``<out>/_gold/`` records next to each request.
    """

    NAME: str                                  # the logged ``task`` field, e.g. "support_triage"
    PROJECT: str                               # registered model name, e.g. "support-bot"
    MODEL_VERSION: str                         # the logged ``model_version`` field
    DESCRIPTION: str                           # one line for reports: who asks what, what the answer holds
    KINDS: tuple[str, ...]                     # request kinds, e.g. the intents
    DEFAULT_ACCURACY: dict[str, float]         # production model's share of right answers per kind

    def make_prompt(self, rng: random.Random, kind: str | None = None) -> tuple[list[dict], dict]:
        """A chat asking for ``kind`` (random if None), and its gold record."""
        ...

    def production_answer(self, rng: random.Random, gold: dict, accuracy: dict[str, float]) -> tuple[str, bool]:
        """What the production model logged for ``gold``'s request, and whether it is right."""
        ...

    def feedback(self, rng: random.Random, correct: bool, label_noise: float) -> dict:
        """The logged ``feedback`` object of an answer (only the fields this task's users give)."""
        ...

    def gold_completion(self, gold: dict) -> str:
        """The right answer, as the model should write it."""
        ...

    def is_correct(self, answer: str, gold: dict) -> bool:
        """Whether ``answer`` is exactly right for ``gold``'s request."""
        ...

    def reward_components(self) -> list[dict]:
        """The task's ``rewards.components`` for a flywheel YAML."""
        ...


def parse_json_fields(text: str, keys: tuple[str, ...]) -> dict | None:
    """``{key: value}`` if ``text`` is one JSON object whose ``keys`` are all strings, else None."""
    try:
        obj = json.loads(text.strip())
    except (ValueError, AttributeError):
        return None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in keys):
        return None
    return {k: obj[k] for k in keys}


def kind_by_keywords(text: str, keyword_res: dict, kinds: tuple[str, ...]) -> str | None:
    """The kind whose keyword patterns match ``text`` most often (ties in ``kinds`` order); None if none matches."""
    hits = {kind: len(keyword_res[kind].findall(text)) for kind in kinds}
    best = max(kinds, key=lambda k: hits[k])
    return best if hits[best] else None


@dataclass
class DemoLogSummary:
    """What ``generate_logs`` wrote, with the counts the ingest tests check against."""

    task: str
    out_dir: str
    days: list[str]
    rows: int                       # lines written into the partitions (defects included)
    objects: int
    defects: dict[str, int]         # kind -> count
    quarantine_expected: int        # defects that validate must quarantine (all but PII)
    logged_accuracy: float          # share of logged completions that are correct (gold)
    accuracy_by_kind: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


_PII = ("john.doe{n}@example.com", "+1 415-555-{n:04d}", "4111 1111 1111 1111", "jane_{n}@mail.example.org")
_WRONG_TYPES = (("latency_ms", "fast"), ("thumbs", "up"), ("messages", "hello"), ("completion", 12345),
                ("resolved", "yes"), ("timestamp", 1764000000), ("request_id", 987654), ("escalated", 3))
_FEEDBACK_NAMES = ("thumbs", "resolved", "escalated")


def _malformed(rng: random.Random, row: dict) -> tuple[bytes, str]:
    line = orjson.dumps(row)
    choice = rng.randrange(4)
    if choice == 0:
        return line[: rng.randrange(5, len(line) - 5)], "malformed_json"
    if choice == 1:
        cut = rng.randrange(5, len(line) - 5)
        return line[:cut] + b"\xff\xfe\xc3" + line[cut:], "invalid_utf8"
    if choice == 2:
        return b"[" + line + b"]", "not_an_object"
    return b"<html>502 Bad Gateway</html>", "malformed_json"


def _wrong_type(rng: random.Random, row: dict) -> tuple[dict, str]:
    """A field of the wrong type; feedback fields only among those the task's feedback has."""
    options = [(n, v) for n, v in _WRONG_TYPES if n not in _FEEDBACK_NAMES or n in row["feedback"]]
    name, value = rng.choice(options)
    if name in _FEEDBACK_NAMES:
        row["feedback"][name] = value
    else:
        row[name] = value
    return row, f"type:{name}"


def _out_of_range(rng: random.Random, row: dict) -> tuple[dict, str]:
    name = rng.choice(["thumbs", "latency_ms", "timestamp", "role"])
    if name == "thumbs":
        row["feedback"]["thumbs"] = rng.choice([5, -3, 2])
    elif name == "latency_ms":
        row["latency_ms"] = -rng.randint(1, 1000)
    elif name == "timestamp":
        row["timestamp"] = "2099-01-01T00:00:00Z"
    else:
        row["messages"][1]["role"] = "wizard"
    return row, f"range:{name}"


def _with_pii(rng: random.Random, row: dict) -> tuple[dict, str]:
    """PII in the user message, or in the feedback comment when the task's feedback has one."""
    pii = rng.choice(_PII).format(n=rng.randint(0, 9999))
    if rng.random() < 0.5 or "comment" not in row["feedback"]:
        row["messages"][1]["content"] += f" You can reach me at {pii}."
    else:
        row["feedback"]["comment"] = f"call me back: {pii}"
    return row, "pii"


def apply_defect(rng: random.Random, kind: str, row: dict, max_chars: int) -> tuple[bytes | dict, str]:
    """Turn a clean row into a defect of ``kind``; returns (line bytes or row dict, expected validate reason)."""
    if kind == "malformed":
        return _malformed(rng, row)
    if kind == "missing_field":
        name = rng.choice(REQUIRED_FIELDS)
        del row[name]
        return row, f"missing:{name}"
    if kind == "wrong_type":
        return _wrong_type(rng, row)
    if kind == "out_of_range":
        return _out_of_range(rng, row)
    if kind == "oversized":
        blob = "lorem ipsum " * (max_chars // 12 + rng.randint(50, 500))
        if rng.random() < 0.5:
            row["completion"] = blob
            return row, "length:completion"
        row["messages"][1]["content"] += " " + blob
        return row, "length:messages"
    if kind == "pii":
        return _with_pii(rng, row)
    raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")


def _check_arguments(task: DemoTask, fmt: str, defect_kinds: tuple[str, ...],
                     accuracy: dict[str, float] | None) -> tuple[tuple[str, ...], dict[str, float]]:
    """The defect kinds the format can carry and the per-kind accuracy; errors name the bad argument."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt: must be jsonl, jsonl.gz or parquet, got {fmt!r}")
    unknown = set(defect_kinds) - set(DEFECT_KINDS)
    if unknown:
        raise ValueError(f"defect_kinds: unknown {sorted(unknown)}; known: {', '.join(DEFECT_KINDS)}")
    unknown = set(accuracy or {}) - set(task.KINDS)
    if unknown:
        raise ValueError(f"accuracy: unknown kinds {sorted(unknown)} for task {task.NAME}; known: "
                         f"{', '.join(task.KINDS)}")
    if fmt == "parquet":
        defect_kinds = tuple(k for k in defect_kinds if k not in ("malformed", "wrong_type"))
    return defect_kinds, {**task.DEFAULT_ACCURACY, **(accuracy or {})}


@dataclass
class _Writer:
    """Everything one ``generate_logs`` call accumulates while it writes the days."""

    task: DemoTask
    rng: random.Random
    accuracy: dict[str, float]
    label_noise: float
    defect_rate: float
    defect_kinds: tuple[str, ...]
    max_chars: int
    defects: Counter = field(default_factory=Counter)
    correct_by_kind: Counter = field(default_factory=Counter)
    total_by_kind: Counter = field(default_factory=Counter)

    def logged_row(self, day: dt.date, i: int, second: int) -> tuple[dict, dict, bool]:
        """One request as production logged it, its gold record, and whether the logged answer is right."""
        task, rng = self.task, self.rng
        messages, gold = task.make_prompt(rng)
        completion, correct = task.production_answer(rng, gold, self.accuracy)
        self.total_by_kind[gold["kind"]] += 1
        self.correct_by_kind[gold["kind"]] += correct
        ts = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(seconds=second)
        row = {
            "request_id": f"req-{day:%Y%m%d}-{i:07d}", "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "task": task.NAME, "model_version": task.MODEL_VERSION, "messages": messages, "completion": completion,
            "feedback": task.feedback(rng, correct, self.label_noise),
            "latency_ms": int(rng.lognormvariate(5.6, 0.4)),
            "metadata": {"channel": rng.choice(["chat", "email", "app"]), "locale": "en-US"},
        }
        return row, gold, correct

    def write_object(self, path: Path, obj: str, day: dt.date, rows: range, seconds: list[int], fmt: str,
                     gold_lines: list[dict], defect_lines: list[dict]) -> None:
        """One object of ``rows`` lines, some turned into defects (recorded in ``defect_lines``)."""
        rng = self.rng
        lines: list[bytes | dict] = []
        clean_rows: list[dict] = []
        for i in rows:
            row, gold, correct = self.logged_row(day, i, seconds[i])
            request_id = row["request_id"]
            kind = rng.choice(self.defect_kinds) if self.defect_kinds and rng.random() < self.defect_rate else None
            if kind == "duplicate" and not clean_rows:
                kind = None
            gold_lines.append({"request_id": request_id, "messages": row["messages"],
                               "completion": self.task.gold_completion(gold), **gold,
                               "logged_completion": row["completion"], "logged_correct": correct, "defect": kind})
            if kind is None:
                lines.append(row)
                clean_rows.append(row)
                continue
            if kind == "duplicate":
                line, reason = dict(rng.choice(clean_rows)), "duplicate:request_id"
                request_id = line["request_id"]
            else:
                line, reason = apply_defect(rng, kind, json.loads(json.dumps(row)), self.max_chars)
            lines.append(line)
            self.defects[kind] += 1
            defect_lines.append({"object": obj, "line": len(lines), "kind": kind, "reason": reason,
                                 "request_id": request_id, "expect": "scrub" if kind == "pii" else "quarantine"})
        _write_object(path, lines, fmt)

    def write_day(self, out: Path, day: dt.date, rows_per_day: int, parts_per_day: int, fmt: str) -> None:
        """The day's partition ``dt=<day>/``, its gold records and its defect records."""
        name = day.isoformat()
        (out / f"dt={name}").mkdir(parents=True, exist_ok=True)
        (out / "_gold").mkdir(exist_ok=True)
        (out / "_defects").mkdir(exist_ok=True)
        gold_lines: list[dict] = []
        defect_lines: list[dict] = []
        seconds = sorted(self.rng.randrange(86400) for _ in range(rows_per_day))
        bounds = [round(i * rows_per_day / parts_per_day) for i in range(parts_per_day + 1)]
        for p in range(parts_per_day):
            obj = f"dt={name}/part-{p:05d}.{fmt}"
            self.write_object(out / obj, obj, day, range(bounds[p], bounds[p + 1]), seconds, fmt,
                              gold_lines, defect_lines)
        _write_jsonl(out / "_gold" / f"{name}.jsonl", gold_lines)
        _write_jsonl(out / "_defects" / f"{name}.jsonl", defect_lines)


def generate_logs(task: DemoTask, out_dir: str | Path, days: int = 3, rows_per_day: int = 1000, seed: int = 0,
                  defect_rate: float = 0.05, start_date: str | dt.date | None = None,
                  accuracy: dict[str, float] | None = None, label_noise: float = 0.1, parts_per_day: int = 2,
                  fmt: str = "jsonl.gz", defect_kinds: tuple[str, ...] = DEFECT_KINDS,
                  max_chars: int = 8000) -> DemoLogSummary:
    """Write ``days`` partitions of ``rows_per_day`` logged ``task`` interactions (defects included) under ``out_dir``.

    ``start_date`` defaults to ``days`` days before today (UTC), so the newest partition is yesterday and no timestamp
    is in the future. ``fmt``: ``jsonl``, ``jsonl.gz`` or ``parquet`` (Parquet gets no line-level defects).
    ``accuracy`` overrides the production model's per-kind accuracy (``task.DEFAULT_ACCURACY``); ``label_noise`` is
    the share of feedback labels that contradict the answer's correctness.
    """
    defect_kinds, accuracy = _check_arguments(task, fmt, defect_kinds, accuracy)
    if start_date is None:
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    else:
        start = start_date if isinstance(start_date, dt.date) else dt.date.fromisoformat(str(start_date))
    out = Path(out_dir)
    writer = _Writer(task, random.Random(seed), accuracy, label_noise, defect_rate, defect_kinds, max_chars)
    day_list = [start + dt.timedelta(days=d) for d in range(days)]
    for day in day_list:
        writer.write_day(out, day, rows_per_day, parts_per_day, fmt)
    total = sum(writer.total_by_kind.values())
    return DemoLogSummary(
        task=task.NAME, out_dir=str(out), days=[d.isoformat() for d in day_list], rows=days * rows_per_day,
        objects=days * parts_per_day, defects=dict(writer.defects),
        quarantine_expected=sum(n for k, n in writer.defects.items() if k != "pii"),
        logged_accuracy=round(sum(writer.correct_by_kind.values()) / max(total, 1), 4),
        accuracy_by_kind={k: round(writer.correct_by_kind[k] / max(writer.total_by_kind[k], 1), 4)
                          for k in task.KINDS},
    )


def _write_object(path: Path, lines: list[bytes | dict], fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_struct_array(pa.array(lines)), path)
        return
    data = b"\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines) + b"\n"
    if fmt == "jsonl.gz":
        data = gzip.compress(data, compresslevel=1, mtime=0)
    path.write_bytes(data)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def load_gold(out_dir: str | Path, days: list[str] | None = None) -> list[dict]:
    """Gold records of ``days`` (all if None): request_id, messages, completion (the right answer), the gold fields
    (``kind`` and the task's answer fields), logged_completion, logged_correct, defect."""
    files = sorted(Path(out_dir, "_gold").glob("*.jsonl"))
    return [orjson.loads(line) for f in files if days is None or f.stem in days
            for line in f.read_bytes().splitlines() if line]


def load_defects(out_dir: str | Path) -> list[dict]:
    """Every recorded defect: object, line, kind, reason (the validate reason expected), request_id, expect."""
    return [orjson.loads(line) for f in sorted(Path(out_dir, "_defects").glob("*.jsonl"))
            for line in f.read_bytes().splitlines() if line]
