"""End to end on real models + MLflow (SQLite): a degraded candidate is rejected and stays challenger, a better one is
promoted, `flywheel rollback` brings the previous champion back."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


def _cfg(state_dir, golden):
    from flywheel.config import load_config

    return load_config(None, overrides={
        "project.state_dir": str(state_dir), "evaluate.golden_set": str(golden), "evaluate.bootstrap_samples": 300,
        "evaluate.max_new_tokens": 24,
    })


LINEAGE_TAGS = ("snapshot_hash", "validation_report", "reward_spec_hash", "base_model", "parent_champion_version",
                "code_revision")


def test_degraded_candidate_fails_the_gate_better_one_is_promoted_and_rollback_restores(
        tiny, scorer, state_dir, tmp_path, make_scores, make_candidate):
    import flywheel.cli  # noqa: F401  (registers the commands)
    from flywheel.cli.app import app
    from flywheel.records import Evaluation
    from flywheel.registry import client_for, registry_state, tracking_uri
    from tasks.evaluate import run_evaluation
    from tasks.promote import promote_candidate

    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"messages": p}) + "\n" for p in tiny["eval"]))
    cfg = _cfg(state_dir, golden)
    score, kinds = scorer
    scores = make_scores(snapshot_hash="snap-sha", spec_hash="spec-sha")
    uri = tracking_uri(cfg.state)

    def release(adapter):
        train_run = f"train-{Path(adapter).name}"
        ev = run_evaluation(cfg, adapter, None, candidate_run_id=train_run, score=score, kinds=kinds,
                            base_model=str(tiny["base"]))
        assert isinstance(ev, Evaluation) and ev.candidate_run_id == train_run
        cand = make_candidate(adapter, tiny["base"], scores, champion_version=ev.champion_version, run_id=train_run)
        return ev, promote_candidate.fn(cfg, cand, ev)

    # 1. first release: compared with the base (no champion yet)
    ev1, rel1 = release(tiny["weak"])
    assert ev1.decision.passed, ev1.decision.reason
    assert rel1.decision == "promoted" and rel1.champion_version == 1

    # 2. the degraded candidate (noise on the adapter) fails the gain gate and stays challenger
    ev2, rel2 = release(tiny["noisy"])
    gates = {g.name: g for g in ev2.decision.gates}
    assert not ev2.passed and not gates["total_gain"].passed and gates["total_gain"].value < 0
    assert rel2.decision == "rejected"
    assert registry_state(uri, "support-bot")["aliases"] == {"champion": 1, "challenger": 2, "previous": None}
    report = json.loads(Path(ev2.report_json).read_text())
    assert report["report"]["reference"] == "champion" and report["report"]["champion_version"] == 1
    assert "REJECTED" in Path(ev2.report_html).read_text()

    # 3. the better candidate beats the champion with a CI above 0, keeps every rule, and is promoted
    ev3, rel3 = release(tiny["strong"])
    assert ev3.passed, ev3.decision.reason
    assert ev3.summary["gain_ci"][0] > 0
    assert (rel3.decision, rel3.champion_version, rel3.previous_version) == ("promoted", 3, 1)
    tags = client_for(uri).get_model_version("support-bot", "3").tags
    assert tags["parent_champion_version"] == "1" and tags["reward_spec_hash"] == "spec-sha"
    assert tags["snapshot_hash"] == "snap-sha" and tags["validation_report"] == scores.validation_report_uri
    assert tags["base_model"] == str(tiny["base"]) and all(tags[t] for t in LINEAGE_TAGS)
    assert json.loads(tags["eval_summary"])["passed"] is True
    assert {a.path for a in client_for(uri).list_artifacts(ev3.run_id, "evaluation")} >= {
        "evaluation/report.json", "evaluation/report.html"}

    # 4. rollback through the CLI brings v1 back
    cfg_file = tmp_path / "flywheel.yaml"
    cfg_file.write_text(f"project:\n  state_dir: {state_dir}\n")
    res = CliRunner().invoke(app, ["rollback", "--config", str(cfg_file)])
    assert res.exit_code == 0, res.output
    assert registry_state(uri, "support-bot")["aliases"]["champion"] == 1
    res = CliRunner().invoke(app, ["rollback", "--config", str(cfg_file)])
    assert res.exit_code == 1 and "no 'previous'" in res.output
