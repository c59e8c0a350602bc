"""Prefect task of the evaluate stage: thin wrapper of ``flywheel.evaluate`` (no retries: it is compute, not I/O)."""
from __future__ import annotations

from typing import Any

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.evaluate import EvaluationResult, run_evaluation


@task(name="evaluate_candidate", task_run_name="evaluate-{candidate.adapter_uri}")
def evaluate_candidate(cfg: FlywheelConfig, candidate: Any, scored: Any) -> EvaluationResult:
    """Candidate vs champion (or base) on the scored snapshot's newest rows: CIs, win-rate, KL, gates, decision.

    ``candidate``: the train record (``adapter_uri``, optional ``base_model``); ``scored``: the judge record
    (``scored_uri``, ``spec_uri``) whose reward spec scores the answers exactly as in training.
    """
    return run_evaluation(cfg, candidate.adapter_uri, getattr(scored, "scored_uri", None), scored=scored,
                          base_model=getattr(candidate, "base_model", None))
