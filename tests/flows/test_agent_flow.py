"""The agent flow end to end on a tiny base fitted on production agent transcripts (Prefect test harness, real
stages, real registry): every stage writes what the next reads, and the release lands under `<model>-agent`."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_agent_flow_runs_every_stage_and_releases_under_the_agent_name(prefect_harness, tmp_path):
    from demo.agent_logs import generate_agent_logs
    from flows.agent_training import agent_training
    from flywheel.config import load_config
    from flywheel.registry import Registry

    generate_agent_logs(tmp_path / "transcripts", days=1, conversations_per_day=40, seed=0)
    cfg = load_config(None, overrides={"project.state_dir": str(tmp_path / "state")})
    cfg.model.tiny = cfg.model.tiny.model_copy(update={"hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                      "intermediate_size": 64, "fit_steps": 3,
                                                      "fit_batch_size": 4, "vocab_size": 400})
    cfg.agent = cfg.agent.model_copy(update={
        "transcripts": tmp_path / "transcripts", "rollout_trials": 1, "success_threshold": 0.0, "sft_epochs": 1,
        "rl_steps": 1, "tasks_per_update": 2, "episodes_per_task": 2, "eval_trials": 1, "max_new_tokens": 8,
        "max_steps": 2})
    record = agent_training(cfg)

    run = next((tmp_path / "state" / "agent").glob("*"))
    assert record.champion.episodes == record.candidate.episodes == record.candidate.tasks  # one trial per task
    card = record.synthetic
    assert json.loads((run / "synthetic" / "card.json").read_text())["counts"] == card["counts"]
    kept = (run / "synthetic" / "dataset.jsonl").read_text().splitlines()
    assert card["counts"]["kept"] == len(kept) == card["counts"]["trajectories_in"]  # threshold 0 keeps all
    assert len(record.rl_curve) == 1
    release = record.release
    assert release.model_name == "support-bot-agent" and release.version == 1
    assert release.decision in {"promoted", "rejected"} and "held-out success" in release.reason
    assert Registry.for_agent(cfg).state()  # the agent's registered model exists in the project's store
