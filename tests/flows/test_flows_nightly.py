"""The nightly flow end to end on the tiny model and small demo logs (Prefect test harness, real stages)."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


LINEAGE_TAGS = ("snapshot_hash", "validation_report", "reward_spec_hash", "base_model", "parent_champion_version",
                "code_revision")


def _champion(state: Path, name: str = "support-bot") -> int | None:
    from flywheel.registry import CHAMPION, alias_version, client_for, tracking_uri

    return alias_version(client_for(tracking_uri(state)), name, CHAMPION)


def _versions(state: Path, name: str = "support-bot") -> int:
    from flywheel.registry import client_for, tracking_uri

    return len(client_for(tracking_uri(state)).search_model_versions(f"name='{name}'"))


def test_flows_every_registry_version_carries_its_lineage(fast_demo):
    """Read back from MLflow: day 0's champion and both nights' candidates name where they came from."""
    from flywheel.registry import client_for, tracking_uri

    out, report = fast_demo
    client = client_for(tracking_uri(out / "state"))
    versions = sorted(client.search_model_versions("name='support-bot'"), key=lambda v: int(v.version))
    assert len(versions) >= 3  # v1 bootstrap + one candidate per night
    snapshots = set()
    for mv in versions:
        tags = mv.tags
        for key in LINEAGE_TAGS:
            assert tags.get(key), (mv.version, key, tags)
        assert Path(tags["validation_report"]).is_file() and tags["validation_report"].endswith(".json")
        assert not tags["validation_report"].endswith(".parquet")
        snapshots.add(tags["snapshot_hash"])
    v1, *nightly = versions
    assert v1.tags["parent_champion_version"] == "none" and v1.tags["reward_spec_hash"] == "none"
    for mv in nightly:
        assert mv.tags["snapshot_hash"] != "none" and mv.tags["reward_spec_hash"] != "none"
        assert int(mv.tags["parent_champion_version"]) < int(mv.version)
    assert len(snapshots) == len(versions), "each release was trained on its own night's snapshot"


def _new_partition(out: Path, seed: int) -> str:
    """A day of logs older than any seen so far, arriving late in the source folder (observe must read it)."""
    from demo import support_triage as demo_data

    days = sorted(p.name[3:] for p in (out / "logs").glob("dt=*"))
    day = (dt.date.fromisoformat(days[0]) - dt.timedelta(days=1 + seed)).isoformat()
    tmp = out / f"late-{seed}"
    demo_data.generate_logs(tmp, days=1, rows_per_day=200, seed=100 + seed, start_date=day)
    shutil.copytree(tmp / f"dt={day}", out / "logs" / f"dt={day}")
    return day


def test_flows_demo_report_has_every_night(fast_demo):
    out, report = fast_demo
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["nights"]) == 2
    for night in saved["nights"]:
        for key in ("rows_in", "rows_clean", "rows_quarantined", "champion_reward", "candidate_reward",
                    "candidate_ci", "promoted", "champion_version"):
            assert key in night, key
        assert night["rows_in"] == night["rows_clean"] + night["rows_quarantined"]
        assert night["rows_quarantined"] > 0  # the demo logs carry defects
        assert night["candidate_reward"] is not None and len(night["candidate_ci"]) == 2
        assert night["candidate_ci"][0] <= night["candidate_reward"] <= night["candidate_ci"][1]
        assert night["reward_curve"], "PPO metrics reach the report"
        assert night["gates"], "every gate decision is recorded"
    # night 2 starts from night 1's champion
    n1, n2 = saved["nights"]
    assert int(n2["champion_version"]) >= int(n1["champion_version"]) >= 1
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 2 and "night" in html


def test_flows_rerun_of_the_same_night_skips_finished_stages(fast_demo):
    from flows.continuous_improvement import continuous_improvement

    out, report = fast_demo
    night = report["nights"][-1]
    state = out / "state"
    before = (_champion(state), _versions(state))
    again = continuous_improvement(config_path=str(out / "flywheel.yaml"), day=night["day"])
    assert all(again.cached.values()) and set(again.cached) >= {"observe", "validate", "score", "train", "evaluate",
                                                               "promote", "deploy"}
    assert again.candidate_reward == night["candidate_reward"]
    assert (_champion(state), _versions(state)) == before, "nothing re-registered"


def test_flows_candidate_failing_its_gate_leaves_the_champion(fast_demo):
    from flows.continuous_improvement import continuous_improvement

    out, _ = fast_demo
    state = out / "state"
    champion = _champion(state)
    day = _new_partition(out, seed=1)
    rec = continuous_improvement(config_path=str(out / "flywheel.yaml"), day=day,
                                 overrides={"evaluate.gates.min_gain_ci_low": 1e6})
    assert rec.status == "completed" and rec.rows_clean > 0
    assert rec.promoted is False
    assert any(not g["passed"] for g in rec.gates)
    assert _champion(state) == champion
    assert rec.candidate_version is not None and int(rec.candidate_version) != champion  # registered as challenger


def test_flows_failing_stage_fails_the_run_with_its_name(fast_demo):
    from prefect.states import State

    from flows.continuous_improvement import continuous_improvement

    out, _ = fast_demo
    day = _new_partition(out, seed=2)
    state: State = continuous_improvement(config_path=str(out / "flywheel.yaml"), day=day,
                                          overrides={"validate.gates.min_rows": 10**9}, return_state=True)
    assert state.is_failed()
    assert "stage validate failed" in state.message
    with pytest.raises(Exception, match="stage validate failed"):
        state.result()


def test_flows_ui_serves_prefect_and_mlflow_with_the_registered_model(fast_demo, tmp_path):
    """`flywheel ui` starts both servers; MLflow's REST API lists the model with its aliases."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    out, report = fast_demo
    p_port, m_port = port(), port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    cli = str(Path(sys.executable).parent / "flywheel")
    log = tmp_path / "ui.log"  # a file, not a pipe: servers outliving a crashed `ui` would hold a pipe open forever
    with open(log, "w") as sink:
        proc = subprocess.Popen([cli, "ui", "--config", str(out / "flywheel.yaml"),
                                 "--prefect-port", str(p_port), "--mlflow-port", str(m_port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, body, health = time.time() + 180, None, None
        while time.time() < deadline and (body is None or health is None):
            assert proc.poll() is None, f"flywheel ui exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                health = health or httpx.get(f"http://127.0.0.1:{p_port}/api/health", timeout=2).json()
                r = httpx.get(f"http://127.0.0.1:{m_port}/api/2.0/mlflow/registered-models/get",
                              params={"name": "support-bot"}, timeout=5)
                body = r.json() if r.status_code == 200 else None
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is True and body is not None, "servers did not come up"
        aliases = {a["alias"]: a["version"] for a in body["registered_model"].get("aliases", [])}
        assert aliases.get("champion") == str(report["nights"][-1]["champion_version"])
        assert "challenger" in aliases
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)  # ui gives each server group up to 15 s of SIGTERM (+ 10 s after SIGKILL)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"http://127.0.0.1:{p_port}" in log.read_text()
