"""Train stage: PPO of a LoRA candidate from the champion on the scored snapshot's prompts, with the online reward.

``run_train`` is plain Python (no Prefect); ``train_candidate`` is the Prefect task the nightly flow calls. The work
folder is keyed by the inputs (snapshot, reward spec, champion, config), so a rerun of the same night resumes from
its last checkpoint instead of starting over. Never retried by Prefect: a failed run is resumed by the next call.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from prefect import task
from pydantic import BaseModel

from flywheel.config import FlywheelConfig


class TrainRecord(BaseModel):
    """What the train stage hands on."""

    adapter_uri: str  # candidate LoRA folder (PeftModel.from_pretrained on base_model)
    value_uri: str  # value adapter + score head
    base_model: str
    init_adapter: str | None  # the champion the run started from (also its KL reference)
    champion_version: int | None
    run_id: str | None  # MLflow run with per-step metrics
    steps: int
    reward_start: float  # mean online reward of the first update
    reward_end: float  # mean online reward of the last quarter of updates
    kl_end: float  # KL to the champion at the last update (nats per response)
    seconds: float
    prompts: int
    metrics_uri: str  # metrics.jsonl, one line per update


def ppo_config(cfg: FlywheelConfig, progress: bool = False):
    """``train`` + ``model`` LoRA sections → ``models.trainer.PPOConfig``."""
    from models.trainer import PPOConfig

    fields = set(PPOConfig.__dataclass_fields__)
    values = {k: v for k, v in cfg.train.model_dump().items() if k in fields}
    return PPOConfig(**values, lora_r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha,
                     lora_target_modules=list(cfg.model.lora_target_modules), progress=progress)


def prompts_from_scored(scored_uri: str, max_prompts: int | None, eval_fraction: float = 0.0) -> list[list[dict]]:
    """Distinct prompts (chat messages before the completion) of the scored snapshot, newest first.

    The newest ``eval_fraction`` of the rows is what the evaluate stage holds out (``holdout_split``): those rows are
    never trained on, so the candidate is judged on prompts it has not seen.
    """
    import pandas as pd

    from flywheel.evaluate import holdout_split

    df = pd.read_parquet(scored_uri, columns=["messages", "timestamp"])
    if eval_fraction > 0 and len(df):
        df = df[~holdout_split(df["timestamp"].to_numpy(), eval_fraction)]
    df = df.sort_values("timestamp", ascending=False)
    seen = list(dict.fromkeys(df["messages"].tolist()))[:max_prompts]
    return [json.loads(m) for m in seen]


def _champion(cfg: FlywheelConfig) -> tuple[str | None, int | None, str]:
    """(champion adapter folder, version, base model), or (None, None, configured base) before day 0."""
    from flywheel.evaluate import resolve_base_model

    try:
        from flywheel.serve import fetch_champion

        _, version, local, base = fetch_champion(cfg)
        return str(local), version, base
    except ValueError:
        return None, None, resolve_base_model(cfg)


def run_train(cfg: FlywheelConfig, scored: Any, *, reward_fn: Callable | None = None,
              init_adapter: str | None = None, base_model: str | None = None) -> TrainRecord:
    """PPO from the champion (or ``init_adapter``) with the judge stage's online reward (or ``reward_fn``)."""
    import mlflow

    from flywheel.tracking import ensure_experiment, tracking_uri
    from models.trainer import mlflow_logger, train_ppo

    version = None
    if init_adapter is None and base_model is None:
        init_adapter, version, base_model = _champion(cfg)
    base_model = base_model or _champion(cfg)[2]
    if reward_fn is None:
        from flywheel.judge_stage import build_online_reward

        reward_fn = build_online_reward(cfg, scored)
    prompts = prompts_from_scored(scored.scored_uri, cfg.train.max_prompts, cfg.evaluate.eval_fraction)
    if not prompts:
        raise ValueError(f"{scored.scored_uri}: no prompts to train on outside the newest "
                         f"evaluate.eval_fraction={cfg.evaluate.eval_fraction} held out for evaluation")
    config = ppo_config(cfg)
    key = hashlib.sha256(json.dumps([scored.scored_uri, getattr(scored, "spec_hash", ""), init_adapter, base_model,
                                     asdict(config)], sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cfg.state / "models" / "candidates" / key
    exp = ensure_experiment(cfg.project.name, cfg.state, cfg.registry.tracking_uri)
    uri = tracking_uri(cfg.state, cfg.registry.tracking_uri)
    run_file = out / "mlflow_run_id"
    run_id = run_file.read_text().strip() if run_file.is_file() else None  # resume logs into the same run
    start = time.perf_counter()
    with mlflow.start_run(experiment_id=exp, run_id=run_id, run_name=None if run_id else f"train-{key}") as run:
        out.mkdir(parents=True, exist_ok=True)
        run_file.write_text(run.info.run_id)
        if run_id is None:
            mlflow.set_tags({"stage": "train", "base_model": base_model, "init_adapter": init_adapter or ""})
            mlflow.log_params({k: v for k, v in asdict(config).items() if k != "lora_target_modules"}
                              | {"prompts": len(prompts), "scored_uri": scored.scored_uri})
        result = train_ppo(config, base_model, prompts, reward_fn, out, init_adapter=init_adapter,
                           logger=mlflow_logger(uri, run.info.run_id), dtype=cfg.model.dtype, device=cfg.model.device)
        mlflow.log_artifacts(result.adapter_dir, "adapter")
    last = result.history[-1] if result.history else {}
    return TrainRecord(adapter_uri=str(Path(result.adapter_dir).resolve()), value_uri=str(Path(result.value_dir).resolve()),
                       base_model=str(base_model), init_adapter=init_adapter, champion_version=version,
                       run_id=run.info.run_id, steps=result.steps, reward_start=result.reward_start,
                       reward_end=result.reward_end, kl_end=float(last.get("objective/kl", 0.0)),
                       seconds=round(time.perf_counter() - start, 2), prompts=len(prompts),
                       metrics_uri=str((out / "metrics.jsonl").resolve()))


@task(name="train_candidate", task_run_name="train-candidate")
def train_candidate(cfg: FlywheelConfig, scored: Any) -> TrainRecord:
    """Train a candidate adapter from the champion with PPO on the scored snapshot (resumes a stopped run)."""
    return run_train(cfg, scored)
