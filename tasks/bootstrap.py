"""Prefect tasks of the day-0 bootstrap: build (or resolve) the base, SFT warm start, register the first champion."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel

from flywheel.config import FlywheelConfig


class WarmStart(BaseModel):
    """The SFT/RFT adapter trained on what production did well."""

    base_model: str
    adapter_uri: str
    examples: int  # (prompt, completion) pairs production marked good
    rows: int  # clean rows they were chosen from
    losses: list[float]
    run_id: str | None = None


@task(name="build_base_model")
def build_base_model(cfg: FlywheelConfig, clean_snapshot_uri: str) -> str:
    """``model.base: tiny`` → build the tiny Llama offline from the clean logs (once per state dir); else the
    configured Hugging Face id or local path."""
    from flows.warm_start import build_base, resolve_base, rows_from_snapshot

    target = resolve_base(cfg.model.base, cfg.state)
    if cfg.model.base != "tiny":
        return str(target)
    return str(build_base(target, rows_from_snapshot(clean_snapshot_uri), cfg.model.tiny, seed=cfg.train.seed,
                          progress=True).resolve())


@task(name="sft_warm_start")
def sft_warm_start(cfg: FlywheelConfig, clean_snapshot_uri: str, base_model: str, epochs: int = 4) -> WarmStart:
    """Rejection sampling from production: LoRA SFT on the logged answers marked resolved (thumbs up if no flag)."""
    import mlflow

    from flows.warm_start import good_examples, rows_from_snapshot, train_warm_start
    from flywheel.tracking import ensure_experiment

    rows = rows_from_snapshot(clean_snapshot_uri)
    examples = good_examples(rows)
    if not examples:
        raise ValueError(f"{clean_snapshot_uri}: no logged answer is marked good (resolved / thumbs up); "
                         "nothing to warm-start from")
    out = cfg.state / "models" / "warm-start"
    exp = ensure_experiment(cfg.project.name, cfg.state, cfg.registry.tracking_uri)
    with mlflow.start_run(experiment_id=exp, run_name="bootstrap-sft") as run:
        mlflow.log_params({"stage": "bootstrap", "base_model": base_model, "examples": len(examples),
                           "rows": len(rows), "epochs": epochs, "snapshot": clean_snapshot_uri})
        result = train_warm_start(base_model, examples, out, epochs=epochs, seed=cfg.train.seed,
                                  logger=lambda m, step: mlflow.log_metrics(m, step=step))
        mlflow.log_metric("sft/final_epoch_loss", result.losses[-1])
    return WarmStart(base_model=base_model, adapter_uri=str(Path(result.adapter_dir).resolve()),
                     examples=len(examples), rows=len(rows), losses=result.losses, run_id=run.info.run_id)


@task(name="register_champion", retries=2, retry_delay_seconds=[2, 8])
def register_champion(cfg: FlywheelConfig, warm: WarmStart, snapshot_hash: str | None):
    """Register the warm start as version 1 and give it the ``champion`` alias (a release record)."""
    from flywheel.promote import Lineage, promote
    from flywheel.tracking import ensure_experiment, tracking_uri

    exp = ensure_experiment(cfg.project.name, cfg.state, cfg.registry.tracking_uri)
    return promote(
        warm.adapter_uri, tracking_uri=tracking_uri(cfg.state, cfg.registry.tracking_uri),
        model_name=cfg.registry.model_name or cfg.project.name, experiment_id=exp, state_dir=cfg.state, passed=True,
        reason=f"day-0 bootstrap: SFT on {warm.examples} answers production marked good (of {warm.rows} clean rows)",
        evaluated_champion=None, summary={"stage": "bootstrap", "examples": warm.examples},
        lineage=Lineage(snapshot_hash=snapshot_hash or "", base_model=warm.base_model, train_run_id=warm.run_id or ""),
        run_id=warm.run_id, lock_timeout_s=cfg.registry.lock_timeout_s, require_fresh_evaluation=False,
    )
