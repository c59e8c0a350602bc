"""Promote stage: register the candidate with its lineage (alias ``challenger``), make it ``champion`` only if
every gate passed and the champion it was evaluated against is still the champion.

The candidate carries its lineage (snapshot, validation report, reward spec, base, train run); the registry adds the
parent champion (read under its lock) and the code revision, so every version's tags say where it came from.
Retried only on registry I/O errors (an unreachable MLflow server), never on a rejected or invalid promotion.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config import FlywheelConfig
from flywheel.records import Candidate, Evaluation, Release
from flywheel.registry import Registry
from flywheel.retries import retry_on_transient_io

REPORT_ARTIFACTS = ["evaluation/report.json", "evaluation/report.html"]  # logged by the evaluate stage in its run




@task(name="promote_candidate", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_transient_io)
def promote_candidate(cfg: FlywheelConfig, candidate: Candidate, evaluation: Evaluation) -> Release:
    """Register ``candidate`` with its lineage and ``evaluation``'s summary; ``champion`` moves only if it passed."""
    if Path(evaluation.candidate_uri).resolve() != Path(candidate.adapter_uri).resolve():
        raise ValueError(f"promote: the evaluation is of {evaluation.candidate_uri}, "
                         f"not of the candidate {candidate.adapter_uri}")
    return Registry.from_config(cfg).release(
        candidate.adapter_uri, passed=evaluation.passed, reason=evaluation.decision.reason,
        evaluated_champion=evaluation.champion_version, lineage=candidate.lineage, summary=evaluation.summary,
        run_id=evaluation.run_id, expect_logged=REPORT_ARTIFACTS if evaluation.run_id else [])
