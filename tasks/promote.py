"""Prefect task of the promote stage: thin wrapper of ``flywheel.promote`` (retried only on registry I/O errors)."""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config import FlywheelConfig
from flywheel.evaluate import EvaluationResult
from flywheel.promote import Lineage, Release, promote


def retry_on_registry_io(task, task_run, state) -> bool:
    """Retry when the MLflow server could not be reached, never on a rejected or invalid promotion."""
    try:
        state.result()
    except (ConnectionError, TimeoutError):
        return True
    except Exception as exc:  # noqa: BLE001
        return type(exc).__module__.startswith(("requests", "urllib3")) or "Max retries exceeded" in str(exc)
    return False


@task(name="promote_candidate", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_registry_io)
def promote_candidate(cfg: FlywheelConfig, candidate: Any, evaluation: EvaluationResult, scored: Any) -> Release:
    """Register the candidate with lineage (alias ``challenger``); ``champion`` moves only if every gate passed."""
    from flywheel.tracking import ensure_experiment, tracking_uri

    lineage = Lineage(
        snapshot_hash=str(getattr(scored, "snapshot_hash", "") or ""),
        contract_report=str(getattr(scored, "validation_report_uri", "") or getattr(scored, "snapshot_uri", "") or ""),
        reward_spec_hash=str(getattr(scored, "spec_hash", "") or ""),
        base_model=str(getattr(candidate, "base_model", "") or ""),
        train_run_id=str(getattr(candidate, "run_id", "") or ""),
    )
    return promote(
        candidate.adapter_uri, tracking_uri=tracking_uri(cfg.state, cfg.registry.tracking_uri),
        model_name=cfg.registry.model_name or cfg.project.name,
        experiment_id=ensure_experiment(cfg.project.name, cfg.state, cfg.registry.tracking_uri), state_dir=cfg.state,
        passed=evaluation.passed, reason=evaluation.decision.reason, evaluated_champion=evaluation.champion_version,
        summary=evaluation.summary, lineage=lineage, run_id=evaluation.run_id,
        expect_logged=["evaluation/report.json", "evaluation/report.html"] if evaluation.run_id else [],
        lock_timeout_s=cfg.registry.lock_timeout_s, require_fresh_evaluation=cfg.registry.require_fresh_evaluation,
    )
