"""The train stage's plain function: scored snapshot → candidate adapter, MLflow run with per-step metrics."""
import json
import math

import pandas as pd
import pytest

from flywheel.config import load_config


@pytest.mark.slow
def test_run_train_writes_a_candidate_and_logs_every_step(tiny_base, tiny_task, intent_reward, state_dir):
    import mlflow
    from peft import PeftModel

    from models.policy import load_base
    from tasks.train import run_train

    scored = state_dir / "scored.parquet"
    pd.DataFrame({"messages": [json.dumps(p) for p, _, _ in tiny_task[:40]],
                  "timestamp": pd.date_range("2026-11-25", periods=40, freq="min", tz="UTC")}).to_parquet(scored)
    cfg = load_config(None, {"project.state_dir": str(state_dir), "train.steps": 2, "train.batch_size": 4,
                             "train.max_new_tokens": 12, "train.num_minibatches": 1, "train.ppo_epochs": 1,
                             "model.device": "cpu"})
    record = type("Scored", (), {"scored_uri": str(scored), "spec_hash": "test"})()
    out = run_train(cfg, record, reward_fn=intent_reward, base_model=str(tiny_base))
    held_out = math.ceil(40 * cfg.evaluate.eval_fraction)  # the newest rows belong to the evaluate stage
    assert out.steps == 2 and out.prompts == 40 - held_out and out.init_adapter is None
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
