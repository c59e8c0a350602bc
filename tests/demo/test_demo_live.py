"""``flywheel demo-live`` end to end, in CI time: the fast demo's day-0 champion, the replay upstream standing in for
vLLM (said so), ``flywheel gateway`` as a real process in front of it, simulated users and their delayed feedback,
then one nightly flow on what the gateway captured (its sink is the demo's source folder)."""
from __future__ import annotations

import gzip
import json

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_live_demo_trains_the_night_on_what_the_gateway_captured(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from demo.live import run_live
    from flywheel.config import load_config
    from flywheel.registry import Registry

    out = tmp_path / "demo"
    with prefect_test_harness(server_startup_timeout=120):
        result = run_live(out, requests=240, users=120, upstream_kind="replay", bootstrap_only=True, seed=3)

    assert result["upstream"] == "replay"
    assert result["answered"] == 240 and result["rows_captured"] == 240, result
    assert set(result["rows_by_arm"]) == {"champion"}  # no challenger yet: everyone gets the champion
    assert 0 < result["correct"] < 240  # the stand-in answers like production: mostly, not always, right
    assert result["rows_in"] == 240 and result["rows_clean"] == 240, "observe did not read the captured rows"
    assert 150 <= result["feedback_posted"] <= 230  # ~80 % of the users come back
    assert result["feedback_joined"] == result["feedback_posted"], "delayed feedback did not reach its rows"
    assert result["decision"] in ("canary", "rejected", "stale"), result["reason"]

    cfg = load_config(out / "live.yaml")
    assert cfg.registry.release_mode == "canary" and cfg.gateway.capture.task == "support_triage"
    rows = [json.loads(line) for p in (out / "logs" / f"dt={result['day']}").glob("gw-*.jsonl.gz")
            for line in gzip.decompress(p.read_bytes()).splitlines()]
    assert {r["model_version"] for r in rows} == {"support-bot@champion/1"}
    assert all(r["metadata"]["user_id"].startswith("user-") for r in rows)
    registry = Registry.from_config(cfg)
    assert registry.version_of("champion") == 1, "a canary release must leave the champion"
    # canary: the candidate is the challenger; otherwise it got no alias (the day-0 release, champion and
    # challenger at once, is not a live canary)
    expected_challenger = int(result["candidate_version"]) if result["decision"] == "canary" else 1
    assert registry.version_of("challenger") == expected_challenger
    assert result["deploy"]["status"] == "skipped"  # nothing serves on the deploy port with the replay upstream
    assert result["canary"]["until"] and "entries" in result["canary"]
    assert yaml.safe_load((out / "flywheel.yaml").read_text())["project"]["name"] == "support-bot"
