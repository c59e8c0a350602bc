"""The train stage's plain function: scored snapshot → candidate adapter, MLflow run with per-step metrics."""
import json
import math

import pandas as pd
import pytest

from flywheel.config import load_config
from flywheel.records import Scores


def scores_record(scored, state_dir) -> Scores:
    """A real Scores record for a scored Parquet written by the test (its spec is not read: reward_fn is given)."""
    return Scores(snapshot_hash="snap-test", validation_report_uri=str(state_dir / "validation.json"),
                  scored_uri=str(scored), snapshot_uri=str(scored), rows=len(pd.read_parquet(scored)),
                  components=["intent"], spec_uri=str(state_dir / "spec.json"), spec_hash="spec-test")


def write_scored(tiny_task, path, n=40):
    pd.DataFrame({"messages": [json.dumps(p) for p, _, _ in tiny_task[:n]],
                  "timestamp": pd.date_range("2026-11-25", periods=n, freq="min", tz="UTC")}).to_parquet(path)
    return path


@pytest.mark.slow
def test_run_train_writes_a_candidate_and_logs_every_step(tiny_base, tiny_task, intent_reward, state_dir):
    import mlflow
    from peft import PeftModel

    from models.policy import load_base
    from tasks.train import run_train

    scored = write_scored(tiny_task, state_dir / "scored.parquet")
    cfg = load_config(None, {"project.state_dir": str(state_dir), "train.steps": 2, "train.batch_size": 4,
                             "train.max_new_tokens": 12, "train.num_minibatches": 1, "train.ppo_epochs": 1,
                             "model.device": "cpu"})
    record = scores_record(scored, state_dir)
    out = run_train(cfg, record, reward_fn=intent_reward, base_model=str(tiny_base))
    held_out = math.ceil(40 * cfg.evaluate.eval_fraction)  # the newest rows belong to the evaluate stage
    assert out.steps == 2 and out.prompts == 40 - held_out and out.init_adapter is None
    assert out.lineage.snapshot_hash == "snap-test" and out.lineage.reward_spec_hash == "spec-test"
    assert out.lineage.validation_report == record.validation_report_uri and out.lineage.base_model == out.base_model
    assert out.lineage.parent_champion_version == "none" and out.lineage.train_run_id == out.run_id
    lm, _ = load_base(out.base_model)
    PeftModel.from_pretrained(lm, out.adapter_uri)  # the candidate loads on its base
    client = mlflow.tracking.MlflowClient(f"sqlite:///{state_dir.resolve() / 'mlflow.db'}")
    history = client.get_metric_history(out.run_id, "objective/scores")
    assert [m.step for m in history] == [1, 2]
    # a rerun with the same inputs finds the finished checkpoint and does not train again
    again = run_train(cfg, record, reward_fn=intent_reward, base_model=str(tiny_base))
    assert again.run_id == out.run_id and again.adapter_uri == out.adapter_uri


def test_training_prompts_exclude_the_evaluation_holdout(tmp_path):
    """The newest rows are the evaluate stage's held-out set: training never sees them."""
    import json

    import pandas as pd

    from tasks.train import prompts_from_scored

    ts = pd.date_range("2026-11-20", periods=10, freq="h", tz="UTC")
    msgs = [json.dumps([{"role": "user", "content": f"question {i}"}]) for i in range(10)]
    path = tmp_path / "scored.parquet"
    pd.DataFrame({"messages": msgs, "timestamp": ts}).sample(frac=1, random_state=0).to_parquet(path)

    prompts = prompts_from_scored(str(path), None, eval_fraction=0.2)
    texts = [p[0]["content"] for p in prompts]
    assert texts == [f"question {i}" for i in range(7, -1, -1)]  # newest first, the two newest held out
    assert len(prompts_from_scored(str(path), None, eval_fraction=0.0)) == 10


@pytest.mark.slow
def test_a_night_without_a_train_section_logs_the_default_recipe(tiny_base, tiny_task, intent_reward, state_dir):
    """No ``train:`` in the YAML: the run uses PPOConfig's defaults (the measured recipe) and MLflow shows them."""
    import mlflow

    from models.config import PPOConfig, default_learning_rate
    from tasks.train import run_train

    cfg = load_config(None, {"project.state_dir": str(state_dir), "model.device": "cpu"})
    assert "train" not in cfg.model_fields_set
    scored = write_scored(tiny_task, state_dir / "scored.parquet", n=60)
    out = run_train(cfg, scores_record(scored, state_dir), reward_fn=intent_reward, base_model=str(tiny_base))
    client = mlflow.tracking.MlflowClient(f"sqlite:///{state_dir.resolve() / 'mlflow.db'}")
    params = client.get_run(out.run_id).data.params
    defaults = PPOConfig()
    assert (defaults.advantage, defaults.temperature, defaults.samples_per_prompt) == ("rloo", 0.7, 4)
    for key in ("advantage", "temperature", "samples_per_prompt", "ppo_epochs", "num_minibatches", "batch_size",
                "steps", "init_kl_coef", "lora_r"):
        assert params[key] == str(getattr(defaults, key)), key
    assert params["learning_rate"] == "auto"
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(tiny_base).hidden_size
    assert float(params["learning_rate_resolved"]) == pytest.approx(default_learning_rate(hidden))
    assert out.steps == defaults.steps and out.value_uri is None  # critic-free: no value adapter written
