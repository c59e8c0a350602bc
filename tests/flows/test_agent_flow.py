"""The agent flow end to end through `flywheel demo --agent --fast` (Prefect test harness, real stages, real
registry): production transcripts → tiny base → champion → rejection sampling → SFT → RL → candidate → release under
`<project>-agent`, and the demo's report (paired gain over the test tasks, markdown, terminal table)."""
from __future__ import annotations

import json

import pytest


def test_success_gain_pairs_by_task_and_resamples_tasks():
    from demo.agent_run import success_gain

    champion = {"a": [False, False], "b": [True, True], "c": [False, True], "d": [True, False]}
    candidate = {"a": [True, True], "b": [True, True], "c": [True, True], "d": [True, True], "only-here": [True]}
    g = success_gain(champion, candidate)
    assert g["tasks"] == 4  # the task only one side played is left out
    assert g["gain"] == pytest.approx((1.0 + 0.0 + 0.5 + 0.5) / 4)
    assert 0.0 <= g["ci"][0] <= g["gain"] <= g["ci"][1] <= 1.0
    assert (g["tasks_better"], g["tasks_worse"]) == (3, 0)
    flat = success_gain(champion, champion)
    assert flat["gain"] == 0.0 and flat["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="share no task"):
        success_gain({"a": [True]}, {"b": [True]})


@pytest.mark.slow
def test_agent_demo_runs_every_stage_and_releases_under_the_agent_name(prefect_harness, tmp_path):
    from typer.testing import CliRunner

    from demo.agent_run import PROJECT
    from flywheel.cli import app
    from flywheel.config import load_config
    from flywheel.registry import Registry

    result = CliRunner().invoke(app, ["demo", "--agent", "--fast", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "agent_report.json").read_text())
    assert "agent_report.md" in result.output and (tmp_path / "agent_report.md").read_text().count("| ") >= 6

    run = next((tmp_path / "agent_state" / "agent").glob("*"))
    assert report["run_dir"] == str(run)
    champion, candidate = report["champion"], report["candidate"]
    assert champion["episodes"] == candidate["episodes"] == 2 * candidate["tasks"]  # eval_trials 2 per task
    card = json.loads((run / "synthetic" / "card.json").read_text())
    assert card["counts"] == report["synthetic"]
    kept = (run / "synthetic" / "dataset.jsonl").read_text().splitlines()
    assert card["counts"]["kept"] == len(kept) == card["counts"]["trajectories_in"]  # threshold 0 keeps all
    assert len(report["rl_curve"]) == 1
    gain = report["gain"]
    assert gain["tasks"] == candidate["tasks"]
    assert gain["ci"][0] <= gain["gain"] <= gain["ci"][1]
    release = report["release"]
    assert release["model_name"] == f"{PROJECT}-agent" and release["version"] == 1
    assert release["decision"] in {"promoted", "rejected"} and "held-out success" in release["reason"]
    cfg = load_config(tmp_path / "flywheel.agent.yaml")
    assert Registry.for_agent(cfg).state()  # the agent's registered model exists in the project's store
