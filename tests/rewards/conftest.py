"""Fixtures of the rewards tests: a scripted OpenAI-compatible endpoint, demo snapshots, a tiny base model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.rewards.replay_server import ReplayServer


@pytest.fixture
def replay():
    """``replay(script=[...], **kw)`` starts a ReplayServer on 127.0.0.1 for the test; stopped afterwards."""
    servers: list[ReplayServer] = []

    def start(**kwargs) -> ReplayServer:
        server = ReplayServer(**kwargs).__enter__()
        servers.append(server)
        return server
    yield start
    for s in servers:
        s.__exit__(None, None, None)


def snapshot_from_logs(log_dir: Path, out: Path):
    """Flatten demo JSONL logs into the snapshot columns the judge stage reads (flywheel/schema.py)."""
    import pandas as pd

    rows = []
    for f in sorted(log_dir.glob("dt=*/*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            fb = r.get("feedback") or {}
            rows.append({"request_id": r["request_id"], "dt": f.parent.name[3:], "task": r["task"],
                         "messages": json.dumps(r["messages"]), "completion": r["completion"],
                         "thumbs": fb.get("thumbs"), "resolved": fb.get("resolved"), "escalated": fb.get("escalated"),
                         "edited": fb.get("edited"), "comment": fb.get("comment")})
    df = pd.DataFrame(rows)
    df["thumbs"] = df["thumbs"].astype("Int8")
    for c in ("resolved", "escalated", "edited"):
        df[c] = df[c].astype("boolean")
    df.to_parquet(out, index=False)
    return out


@pytest.fixture(scope="session")
def demo_logs(tmp_path_factory):
    """Two days × 800 rows of demo logs (no line defects) + gold; returns the folder."""
    from demo.support_triage import generate_logs

    out = tmp_path_factory.mktemp("demo_logs")
    generate_logs(out, days=2, rows_per_day=800, seed=7, defect_rate=0.0, fmt="jsonl",
                  start_date="2026-11-20")
    return out


@pytest.fixture(scope="session")
def demo_snapshot(demo_logs, tmp_path_factory):
    return snapshot_from_logs(demo_logs, tmp_path_factory.mktemp("snap") / "clean.parquet")


@pytest.fixture(scope="session")
def tiny_base(demo_logs, tmp_path_factory):
    """A small tiny base (models/tiny.py: BPE tokenizer trained on the demo texts, Llama 96 wide, 2 layers, random "
      "init)."""
    from demo.support_triage import load_gold
    from models.tiny import build_tiny_model

    gold = load_gold(demo_logs)
    texts = [m["content"] for g in gold for m in g["messages"]] + [g["logged_completion"] for g in gold]
    out = tmp_path_factory.mktemp("tiny-base")
    return str(build_tiny_model(out, texts, hidden_size=96, num_layers=2, intermediate_size=256, pretrain_epochs=0))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Reward-model training on a shared 2-core box: one intra-op thread avoids OpenMP spin contention (10x here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
