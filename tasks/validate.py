"""Prefect task of the validate stage: a thin wrapper of ``flywheel.validate`` (deterministic: no retries)."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from flywheel.config.data import ValidateConfig
from flywheel.observe import Observation
from flywheel.validate import Validation, validate


@task(name="validate_snapshot", task_run_name="validate-{observation.snapshot_hash}")
def validate_snapshot(observation: Observation, cfg: ValidateConfig, state_dir: str | Path) -> Validation:
    """Enforce the contract on the observed snapshot; raises ``GateFailed`` (naming the gate) to stop the flow."""
    if not observation.new_data or observation.snapshot_uri is None:
        raise ValueError(f"validate_snapshot: nothing to validate ({observation.message})")
    return validate(observation.snapshot_uri, state_dir, cfg, snapshot_hash=observation.snapshot_hash)
