"""The train stage: PPO of a LoRA candidate from the champion on the scored snapshot's prompts, with the online reward.

``run_train`` is plain Python (no Prefect); ``train_candidate`` is the Prefect task the nightly flow calls. The work
folder is keyed by the inputs (snapshot, reward spec, champion, config), so a rerun of the same night resumes from
its last checkpoint instead of starting over. Never retried by Prefect: a failed run is resumed by the next call.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from prefect import task

from flywheel.base_model import base_model_of
from flywheel.config import FlywheelConfig
from flywheel.records import Candidate, Lineage, Scores, version_tag
from flywheel.registry import Registry
from flywheel.rewards.online import build_online_reward
from flywheel.snapshots import holdout_split


def ppo_config(cfg: FlywheelConfig, progress: bool = False):
    """The ``train`` section → ``models.trainer.PPOConfig`` (the section is generated from it)."""
    from models.trainer import PPOConfig

    return PPOConfig(**cfg.train.ppo_kwargs(), progress=progress)


def mlflow_logger(tracking_uri: str, run_id: str) -> Callable[[dict, int], None]:
    """A logger that writes each update's numeric metrics to an existing MLflow run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    def log(metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                          for k, v in metrics.items() if isinstance(v, (int, float))])
    return log


def prompts_from_scored(scored_uri: str, max_prompts: int | None, eval_fraction: float = 0.0) -> list[list[dict]]:
    """Distinct prompts (chat messages before the completion) of the scored snapshot, newest first.

    The newest ``eval_fraction`` of the rows is what the evaluate stage holds out (``holdout_split``): those rows are
    never trained on, so the candidate is judged on prompts it has not seen.
    """
    import pandas as pd

    df = pd.read_parquet(scored_uri, columns=["messages", "timestamp"])
    if eval_fraction > 0 and len(df):
        df = df[~holdout_split(df["timestamp"].to_numpy(), eval_fraction)]
    df = df.sort_values("timestamp", ascending=False)
    seen = list(dict.fromkeys(df["messages"].tolist()))[:max_prompts]
    return [json.loads(m) for m in seen]


def start_point(cfg: FlywheelConfig) -> tuple[str | None, int | None, str]:
    """(champion adapter folder, version, base model) of the registry's champion; before day 0 (no champion),
    (None, None, the configured base)."""
    registry = Registry.from_config(cfg)
    champ = registry.champion()
    if champ is None:
        return None, None, base_model_of(cfg)
    _, local = registry.fetch(champ.version)
    return str(local), champ.version, base_model_of(cfg, champ.base_model)


def lineage_of(scores: Scores, base_model: str, champion_version: int | None, run_id: str) -> Lineage:
    """Where the candidate comes from: the scored snapshot's validation, its reward spec, the base, the champion."""
    return Lineage(snapshot_hash=scores.snapshot_hash, validation_report=scores.validation_report_uri,
                   reward_spec_hash=scores.spec_hash, base_model=base_model,
                   parent_champion_version=version_tag(champion_version), train_run_id=run_id)


def run_train(cfg: FlywheelConfig, scores: Scores, *, reward_fn: Callable | None = None,
              init_adapter: str | None = None, base_model: str | None = None) -> Candidate:
    """PPO from the champion (or ``init_adapter`` on ``base_model``) with the score stage's online reward."""
    import mlflow

    from models.trainer import train_ppo

    version = None
    if init_adapter is None and base_model is None:
        init_adapter, version, base_model = start_point(cfg)
    base_model = base_model or start_point(cfg)[2]
    reward_fn = reward_fn or build_online_reward(cfg, scores)
    prompts = prompts_from_scored(scores.scored_uri, cfg.train.max_prompts, cfg.evaluate.eval_fraction)
    if not prompts:
        raise ValueError(f"{scores.scored_uri}: no prompts to train on outside the newest "
                         f"evaluate.eval_fraction={cfg.evaluate.eval_fraction} held out for evaluation")
    config = ppo_config(cfg)
    key = hashlib.sha256(json.dumps([scores.scored_uri, scores.spec_hash, init_adapter, base_model, asdict(config)],
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cfg.state / "models" / "candidates" / key
    registry = Registry.from_config(cfg)
    run_file = out / "mlflow_run_id"
    run_id = run_file.read_text().strip() if run_file.is_file() else None  # resume logs into the same run
    start = time.perf_counter()
    with mlflow.start_run(experiment_id=registry.experiment_id(), run_id=run_id,
                          run_name=None if run_id else f"train-{key}") as run:
        out.mkdir(parents=True, exist_ok=True)
        run_file.write_text(run.info.run_id)
        if run_id is None:
            mlflow.set_tags({"stage": "train", "base_model": base_model, "init_adapter": init_adapter or "none",
                             "snapshot_hash": scores.snapshot_hash, "reward_spec_hash": scores.spec_hash})
            params = {k: ("auto" if v is None and k == "learning_rate" else v) for k, v in asdict(config).items()}
            mlflow.log_params(params | {"prompts": len(prompts), "scored_uri": scores.scored_uri})
        result = train_ppo(config, base_model, prompts, reward_fn, out, init_adapter=init_adapter,
                           logger=mlflow_logger(registry.tracking_uri, run.info.run_id), dtype=cfg.model.dtype,
                           device=cfg.model.device)
        mlflow.log_param("learning_rate_resolved", result.config.learning_rate)  # the model-derived value
        mlflow.log_artifacts(result.adapter_dir, "adapter")
    last = result.history[-1] if result.history else {}
    return Candidate(
        scored_uri=scores.scored_uri, spec_hash=scores.spec_hash,
        lineage=lineage_of(scores, str(base_model), version, run.info.run_id),
        adapter_uri=str(Path(result.adapter_dir).resolve()),
        value_uri=str(Path(result.value_dir).resolve()) if result.value_dir else None,  # None without a critic
        base_model=str(base_model), init_adapter=init_adapter, champion_version=version, run_id=run.info.run_id,
        steps=result.steps, reward_start=result.reward_start, reward_end=result.reward_end,
        kl_end=float(last.get("objective/kl", 0.0)), seconds=round(time.perf_counter() - start, 2),
        prompts=len(prompts), metrics_uri=str((out / "metrics.jsonl").resolve()))


@task(name="train_candidate")
def train_candidate(cfg: FlywheelConfig, scores: Scores) -> Candidate:
    """Train a candidate adapter from the champion with PPO on the scored snapshot (resumes a stopped run)."""
    return run_train(cfg, scores)
