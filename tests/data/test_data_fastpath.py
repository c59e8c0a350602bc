"""The fast parse path (msgspec structs, Arrow columns) gives the same clean rows and quarantine records as the
per-line path (orjson + per-field checks) on a corrupted log file with every odd shape we know of."""
import json
import random
from pathlib import Path

import pyarrow.parquet as pq

from demo.support_triage import generate_logs
from flywheel import logparse
from flywheel.config.data import GatesConfig, SourceConfig, ValidateConfig
from tasks.observe import observe
from tasks.validate import GateFailed, validate

NOW = "2026-11-26T00:00:00+00:00"
ODD = [   # lines the fast path must hand to the per-line path (or handle identically)
    (b'{"request_id": "odd-1", "timestamp": "2026-11-01T10:00:00+02:00", "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": "h\\u00e9llo"}], "completion": "ok", "feedback": {"thumbs": 1.0}}'),
    (b'{"request_id": "odd-2", "timestamp": "2026-02-30T10:00:00Z", "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": "x"}], "completion": "ok"}'),
    (b'{"request_id": "odd-3", "timestamp": "2026-11-01T10:00:60Z", "task": "t", "model_version": "m", '
    b'"messages": "[{\\"role\\": \\"user\\", \\"content\\": \\"as a string\\"}]", "completion": "ok"}'),
    (b'{"request_id": "odd-4", "timestamp": "2026-11-01", "task": "t", "model_version": "m", "thumbs": -1, '
    b'"resolved": true, "messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}], '
    b'"completion": "ok", "metadata": {"k": [1, 2]}}'),
    (b'{"request_id": "odd-5", "timestamp": "2026-11-01T10:00:00.250Z", "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": null}, {"role": "tool", "content": "r", "tool_call_id": "c1"}], '
    b'"completion": "ok", "latency_ms": 12.0, "metadata": null}'),
    (b'{"request_id": "dup-1", "timestamp": 5, "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": "first, with a bad timestamp type"}], "completion": "ok"}'),
    (b'{"request_id": "dup-1", "timestamp": "2026-11-01T10:00:00Z", "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": "second, well formed"}], "completion": "ok"}'),
    (b'{"request_id": "odd-6", "timestamp": "2026-11-01T10:00:00Z", "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": "caf\xc3\xa9 \xff"}], "completion": "ok"}'),
    b'[1, 2, 3]', b'{"request_id": "trunc', b'   ', b'{"request_id": "odd-7", "metadata": "not an object"}',
    (b'{"request_id": "odd-8", "timestamp": "2026-11-01T10:00:00Z", "task": "t", "model_version": "m", '
    b'"messages": [{"role": "user", "content": "x"}], "completion": "ok", '
    b'"feedback": {"thumbs": 99999999999999999999}}'),
]


def corrupted_log(root: Path) -> Path:
    generate_logs(root / "gen", days=1, rows_per_day=500, seed=5, defect_rate=0.2, start_date="2026-11-01",
                  fmt="jsonl", parts_per_day=1)
    lines = (root / "gen" / "dt=2026-11-01" / "part-00000.jsonl").read_bytes().split(b"\n")
    rng = random.Random(3)
    for _ in range(40):                                   # byte flips, cut lines, repeated lines
        k = rng.randrange(len(lines))
        op = rng.choice(["flip", "cut", "repeat"])
        if op == "flip" and lines[k]:
            i = rng.randrange(len(lines[k]))
            lines[k] = lines[k][:i] + bytes([lines[k][i] ^ 0xFF]) + lines[k][i + 1:]
        elif op == "cut":
            lines[k] = lines[k][: len(lines[k]) // 2]
        else:
            lines.insert(k, lines[k])
    for k, odd in reversed(list(zip(sorted(rng.sample(range(len(lines)), len(ODD))), ODD))):   # in ODD's order
        lines.insert(k, odd)
    folder = root / "logs" / "dt=2026-11-01"
    folder.mkdir(parents=True)
    (folder / "part.jsonl").write_bytes(b"\n".join(lines))
    return root / "logs"


def ingest(logs: Path, state: Path):
    obs = observe(SourceConfig(uri=str(logs)), state)
    try:
        val = validate(obs.snapshot_uri, state, ValidateConfig(gates=GatesConfig(max_quarantine_fraction=1.0)),
                       now=NOW)
    except GateFailed as e:
        val = e.validation
    clean = {}
    for row in pq.read_table(val.clean_uri).to_pylist():
        row["messages"] = json.loads(row["messages"]) if row["messages"] else None      # same JSON value, the
        row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None      # fast path keeps the raw text
        clean[(row["source_object"], row["source_line"])] = row
    quarantined = {(q["source_object"], q["source_line"]): q
                   for q in map(json.loads, Path(val.quarantine_uri).read_text().splitlines())}
    raw_lines = pq.read_table(obs.snapshot_uri, columns=["source_line"])["source_line"].to_pylist()
    return val, clean, quarantined, raw_lines


def test_fast_path_equals_per_line_path(tmp_path, monkeypatch):
    logs = corrupted_log(tmp_path)
    fast_val, fast_clean, fast_q, fast_order = ingest(logs, tmp_path / "fast")
    monkeypatch.setattr(logparse, "FAST_PATH", False)
    slow_val, slow_clean, slow_q, slow_order = ingest(logs, tmp_path / "slow")

    assert slow_order == sorted(slow_order) and fast_order != sorted(fast_order)    # both paths really ran
    assert fast_val.rows_in == slow_val.rows_in == len(fast_clean) + len(fast_q)
    assert fast_val.checks == slow_val.checks and fast_val.pii == slow_val.pii
    assert fast_clean == slow_clean
    assert fast_q == slow_q
    assert len(fast_q) > 100 and len(fast_clean) > 300
    reasons = {r for q in fast_q.values() for r in q["reasons"]}
    assert {"malformed_json", "invalid_utf8", "not_an_object", "type:timestamp", "type:metadata",
            "duplicate:request_id"} <= reasons
    first, second = sorted(k for k, q in fast_q.items() if q["request_id"] == "dup-1")   # log order decides
    assert fast_q[first]["reasons"] == ["type:timestamp"] and fast_q[second]["reasons"] == ["duplicate:request_id"]
