"""Day 0: observe + validate the first logs, build (or load) the base, SFT it on what production did well, and
register it as the first champion. Afterwards the nightly flow takes over (its observe skips what day 0 read)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows._stage import (
    Night,
    StageFailed,
    committed_observation,
    digest,
    load_flow_config,
    night_of,
    remember_observation,
    run_glue,
    run_stage,
)
from flows.ingest import observe_night
from flywheel.base_model import resolve_base
from tasks.bootstrap import build_base_model, existing_champion, register_champion, sft_warm_start
from tasks.observe import commit_observed
from tasks.validate import validate_snapshot

__all__ = ["BootstrapRecord", "bootstrap_champion"]


class BootstrapRecord(BaseModel):
    day: str
    status: str  # bootstrapped | existing (a champion was already registered: nothing done)
    rows_in: int = 0
    rows_clean: int = 0
    rows_quarantined: int = 0
    snapshot_hash: str | None = None
    base_model: str
    adapter_uri: str | None = None
    sft_rows: int = 0
    sft_losses: list[float] = []
    champion_version: str | None = None
    train_run_id: str | None = None
    stage_seconds: dict[str, float] = {}
    stage_run_seconds: dict[str, float] = {}


def _bootstrap_name() -> str:
    from prefect.runtime import flow_run

    return f"bootstrap-{(flow_run.parameters or {}).get('day') or 'day0'}"


@flow(name="bootstrap-champion", flow_run_name=_bootstrap_name, log_prints=True)
def bootstrap_champion(config_path: str | None = None, day: str | None = None,
                       overrides: dict[str, Any] | None = None, sft_epochs: int = 4) -> BootstrapRecord:
    """Register the day-0 champion (idempotent: with a champion already registered, nothing is trained)."""
    log = get_run_logger()
    cfg = load_flow_config(config_path, overrides)
    night = Night(day=night_of(day, cfg.schedule.timezone), state=cfg.state, config_digest=digest(cfg, sft_epochs))
    night.ensure_storage()
    existing = existing_champion(cfg)
    if existing is not None:
        log.info(f"champion v{existing[0]} already registered: bootstrap skipped")
        return BootstrapRecord(day=night.day, status="existing",
                               base_model=str(resolve_base(cfg.model.base, cfg.state)),
                               adapter_uri=existing[1], champion_version=str(existing[0]))
    observation = observe_night(night, cfg)
    observation = committed_observation(night, observation, "bootstrap", log=log.warning)  # flows/_stage.py
    if not observation.new_data:
        raise StageFailed("observe", f"no logs to bootstrap from in {cfg.source.uri}: {observation.message}")
    clean = run_stage(night, "validate", validate_snapshot, observation, cfg.validation, str(cfg.state))
    run_glue("commit", remember_observation, night, observation, "bootstrap")
    run_stage(night, "commit", commit_observed, observation, str(cfg.state))
    base = run_stage(night, "build_base", build_base_model, cfg, clean)
    warm = run_stage(night, "sft", sft_warm_start, cfg, clean, base, sft_epochs)
    release = run_stage(night, "register", register_champion, cfg, warm)
    if release.champion_version is None:
        raise StageFailed("register", f"the warm start was not made champion: {release.reason}")
    rec = BootstrapRecord(day=night.day, status="bootstrapped", rows_in=clean.rows_in, rows_clean=clean.rows_clean,
                          rows_quarantined=clean.rows_quarantined, snapshot_hash=clean.snapshot_hash,
                          base_model=base, adapter_uri=warm.adapter_uri, sft_rows=warm.examples,
                          sft_losses=warm.losses, champion_version=str(release.champion_version),
                          train_run_id=warm.run_id, stage_seconds=dict(night.seconds),
                          stage_run_seconds=dict(night.run_seconds))
    create_markdown_artifact(key="bootstrap-summary", markdown="\n".join([
        f"# Day-0 bootstrap ({rec.day})", "",
        f"- rows in / clean / quarantined: {rec.rows_in} / {rec.rows_clean} / {rec.rows_quarantined}",
        f"- base: `{rec.base_model}`",
        f"- SFT on {rec.sft_rows} answers production marked good; epoch losses "
        + ", ".join(f"{x:.3f}" for x in rec.sft_losses),
        f"- champion: version {rec.champion_version} (MLflow run `{rec.train_run_id}`)",
    ]))
    return rec
