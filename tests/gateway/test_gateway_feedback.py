"""Delayed feedback: posted to the gateway days after the answer, folded by observe, joined by score onto the right
interaction whichever night it was observed in; an unknown request id is quarantined with a reason.

Gateway and upstream (``gateway_upstream.StubUpstream``) are real uvicorn servers in threads of this process.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import pandas as pd
from gateway_upstream import ServerThread
from test_gateway_capture import CHAT, sink_rows

import flywheel.gateway.app as gateway_app
from flywheel.gateway.app import create_app

KPI_ONLY = [{"name": "kpi", "kind": "kpi", "params": {"resolved": 1.0, "thumbs": 0.5}}]


def chat(client: httpx.Client, n: int) -> list[str]:
    out = []
    for i in range(n):
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT}, headers={"x-user-id": str(i)})
        assert r.status_code == 200
        out.append(r.headers["x-request-id"])
    return out


def night(cfg):
    """observe (committed) → validate → score, as the nightly flow runs them."""
    from tasks.observe import observe
    from tasks.score import score
    from tasks.validate import validate

    observation = observe(cfg.source, cfg.state, commit=True)
    validation = validate(observation.snapshot_uri, cfg.state, cfg.validation, snapshot_hash=observation.snapshot_hash)
    return observation, validation, score(cfg, validation.clean_uri, snapshot_hash=validation.snapshot_hash)


def test_feedback_days_later_reaches_its_interaction_and_unknown_ids_are_quarantined(stub, make_cfg, tmp_path,
                                                                                       monkeypatch):
    from flywheel.feedback import load_feedback_table
    from flywheel.rewards.reward_training import labelled_history
    from tasks.score import read_snapshot

    cfg = make_cfg(stub.url, **{"rewards.components": KPI_ONLY})
    # night 1: answers only
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        first = chat(client, 6)
    _, _, scores1 = night(cfg)
    assert scores1.feedback_joined == scores1.feedback_joined_history == 0

    # night 2: new answers; then, three days later, the labels of night 1's answers (and one of tonight's)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat(timespec="milliseconds")[:23] + "Z"
    with ServerThread(create_app(cfg)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        second = chat(client, 4)
        monkeypatch.setattr(gateway_app, "now_iso", lambda: later)
        r = client.post("/v1/feedback", json={"request_id": first[0], "resolved": True, "thumbs": 1})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        t0 = "2026-11-01T10:00:00Z"  # the events' own times order them, whatever order they arrive in
        r = client.post("/v1/feedback", json={"events": [
            {"request_id": first[1], "resolved": True, "kpi": {"csat": 5}, "timestamp": "2026-11-02T10:00:00Z"},
            {"request_id": first[1], "resolved": False, "thumbs": -1, "timestamp": t0},
            {"request_id": second[0], "thumbs": -1},
            {"request_id": "gw-never-seen", "resolved": False}]})
        assert r.status_code == 200 and r.json()["accepted"] == 4
        bad = client.post("/v1/feedback", json=[{"request_id": first[2], "thumbs": 5}])
        assert bad.status_code == 422 and "events[0].thumbs" in bad.json()["error"]["message"]
        bad = client.post("/v1/feedback", json={"request_id": first[2], "stars": 5})
        assert bad.status_code == 422 and "body.stars: unknown field" in bad.json()["error"]["message"]
    events = sink_rows(tmp_path / "logs", feedback=True)
    assert len(events) == 5 and {e["received_at"][:10] for e in events} == {later[:10]}
    assert list((tmp_path / "logs" / "_feedback").glob(f"dt={later[:10]}/*.jsonl.gz"))

    observation, validation, scores2 = night(cfg)
    assert observation.rows == 4 and validation.rows_clean == 4, "feedback objects were taken for interactions"
    assert observation.feedback_events == 5
    assert scores2.feedback_joined == 1 and scores2.feedback_joined_history == 2
    assert scores2.feedback_unknown == 1
    quarantined = [json.loads(line) for line in Path(scores2.feedback_quarantine_uri).read_text().splitlines()]
    assert [(q["request_id"], q["reasons"]) for q in quarantined] == [("gw-never-seen", ["unknown:request_id"])]

    scored = pd.read_parquet(scores2.scored_uri).set_index("request_id")
    assert scored.loc[second[0], "thumbs"] == -1 and scored.loc[second[0], "reward_kpi"] == -0.5
    assert scored.loc[second[1:], "reward_kpi"].isna().all()

    # the reward model's history: night 1's rows now carry the labels that arrived after their night
    table = load_feedback_table(cfg.state)
    history = labelled_history(cfg, read_snapshot(validation.clean_uri), validation.clean_uri, feedback=table)
    history = history.set_index("request_id")
    assert bool(history.loc[first[0], "resolved"]) is True and history.loc[first[0], "thumbs"] == 1
    # latest event per field: resolved True (Nov 2) beats False (Nov 1); thumbs only from the Nov 1 event
    assert bool(history.loc[first[1], "resolved"]) is True and history.loc[first[1], "thumbs"] == -1
    assert history.loc[first[1], "kpi_csat"] == 5
    assert first[2] not in history.index  # no label: not in the reward model's history
