"""Observe in parts, and the ingest flow: observe -> validate -> commit for one night, without scoring or training.

``observe_night`` is how every flow observes: ``plan_observation`` lists the new objects and splits them into parts
of ``source.part_bytes``; ``read_log_part`` reads each part (mapped onto the workers of a Dask or Ray task runner,
one after the other under the default runner); ``assemble_observation`` joins them, in key order, into the raw
snapshot: the same rows, and the same snapshot hash, however many workers read them. Nothing in the stages knows
the runner: a cluster is a ``with_options`` away::

    from prefect_dask import DaskTaskRunner
    from flows.ingest import ingest
    ingest.with_options(task_runner=DaskTaskRunner(address="tcp://scheduler:8786"))("flywheel.yaml")

Every worker needs the project installed and the state dir (``project.state_dir``) on a shared filesystem.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows._stage import (
    Night,
    committed_observation,
    digest,
    load_flow_config,
    night_of,
    remember_observation,
    run_glue,
    run_parts,
    run_stage,
)
from flywheel.config import FlywheelConfig
from flywheel.nightlock import night_lock
from flywheel.records import Observation, Validation
from tasks.observe import assemble_logs, commit_observed, plan_logs, read_log_part
from tasks.validate import validate_snapshot

__all__ = ["ingest", "observe_night"]


def observe_night(night: Night, cfg: FlywheelConfig) -> Observation:
    """The night's raw snapshot, read in parts (stages ``observe``, ``observe-read``, ``observe-assemble``)."""
    plan = run_stage(night, "observe", plan_logs, cfg.source, str(cfg.state))
    reads = run_parts(night, "observe-read", read_log_part, len(plan.parts), cfg.source, str(cfg.state), plan)
    return run_stage(night, "observe-assemble", assemble_logs, plan, reads, str(cfg.state))


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"ingest-{(flow_run.parameters or {}).get('day') or 'today'}"


@flow(name="ingest", flow_run_name=_run_name, log_prints=True, persist_result=False)
def ingest(config_path: str | None = None, day: str | None = None, overrides: dict[str, Any] | None = None,
           refresh: bool = False) -> Validation | None:
    """Observe, validate and commit the new logs of ``source`` (None when there are none): the nightly flow's data
    plane alone, e.g. on a cluster (module docstring) or before the first night."""
    log = get_run_logger()
    cfg = load_flow_config(config_path, overrides)
    night = Night(day=night_of(day, cfg.schedule.timezone), state=cfg.state, config_digest=digest(cfg), refresh=refresh)
    with night_lock(cfg.state, night.day, log=log.info):
        night.ensure_storage()
        observation = committed_observation(night, observe_night(night, cfg), "ingest", log=log.warning)
        if not observation.new_data:
            log.info(observation.message)
            return None
        clean = run_stage(night, "validate", validate_snapshot, observation, cfg.validation, str(cfg.state))
        run_glue("commit", remember_observation, night, observation, "ingest")
        run_stage(night, "commit", commit_observed, observation, str(cfg.state))
        log.info(f"{observation.message} ({observation.parts} parts, {observation.part_workers} workers); "
                 f"{clean.rows_clean} clean, {clean.rows_quarantined} quarantined")
        return clean

