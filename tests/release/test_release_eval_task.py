"""The evaluate stage's Prefect task on real records: a ``Candidate`` and ``Scores`` in, an ``Evaluation`` out."""
import json
from pathlib import Path

import pandas as pd
from test_release_eval_decoding import tiny_lora  # noqa: F401  (the tiny base + random adapter fixture)

from flywheel.records import Evaluation


def _scored_snapshot(path, n=10):
    """A scored snapshot's columns the eval set reads: one distinct prompt per day."""
    pd.DataFrame({
        "timestamp": pd.date_range("2026-11-01", periods=n, freq="D", tz="UTC"),
        "messages": [json.dumps([{"role": "user", "content": f"where is order {i:06d}?"}]) for i in range(n)],
    }).to_parquet(path)
    return path


def _spec(path):
    """A reward spec of two rules (what the score stage writes): the online reward rebuilt from it."""
    path.write_text(json.dumps({"version": 1, "missing": "renormalize", "reward_model": None, "components": [
        {"name": "not_degenerate", "kind": "rule", "weight": 1.0, "normalize": "none",
         "params": {"check": "not_degenerate"}},
        {"name": "has_digits", "kind": "rule", "weight": 1.0, "normalize": "none",
         "params": {"check": "regex", "pattern": "[0-9]"}},
    ]}))
    return path


def test_evaluate_candidate_task_scores_with_the_spec_and_names_the_candidate(tiny_lora, state_dir, tmp_path,  # noqa: F811
                                                                              make_scores, make_candidate):
    from flywheel.config import load_config
    from flywheel.registry import client_for, tracking_uri
    from tasks.evaluate import evaluate_candidate

    cfg = load_config(None, overrides={"project.state_dir": str(state_dir), "evaluate.eval_fraction": 0.3,
                                       "evaluate.bootstrap_samples": 200, "evaluate.max_new_tokens": 8})
    scores = make_scores(scored_uri=str(_scored_snapshot(tmp_path / "scored.parquet")))
    scores = scores.model_copy(update={"spec_uri": str(_spec(tmp_path / "spec.json"))})
    candidate = make_candidate(tiny_lora["adapter"], tiny_lora["base"], scores, run_id="train-run-1")

    ev = evaluate_candidate.fn(cfg, candidate, scores)
    assert isinstance(ev, Evaluation)
    assert (ev.candidate_uri, ev.candidate_run_id, ev.champion_version) == (candidate.adapter_uri, "train-run-1", None)
    report = json.loads(Path(ev.report_json).read_text())["report"]
    assert report["reference"] == "base" and report["n_prompts"] == 3  # the newest 30 % of 10 rows
    assert report["kinds"] == {"not_degenerate": "rule", "has_digits": "rule"}
    assert set(report["roles"]) == {"candidate", "base"} and report["roles"]["candidate"]["kl"]["mean"] > 0
    assert set(report["roles"]["candidate"]["pass_rates"]) == {"not_degenerate", "has_digits"}
    run = client_for(tracking_uri(cfg.state)).get_run(ev.run_id)
    assert run.data.tags["stage"] == "evaluate" and run.data.tags["candidate_run_id"] == "train-run-1"
    assert run.data.metrics["gate/passed"] == float(ev.passed)
    assert {a.path for a in client_for(tracking_uri(cfg.state)).list_artifacts(ev.run_id, "evaluation")} >= {
        "evaluation/report.json", "evaluation/report.html", "evaluation/responses.jsonl"}
