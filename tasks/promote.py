"""Promote stage: register the candidate with its lineage (alias ``challenger``), make it ``champion`` only if
every gate passed and the champion it was evaluated against is still the champion.

The candidate carries its lineage (snapshot, validation report, reward spec, base, train run); the registry adds the
parent champion (read under its lock) and the code revision, so every version's tags say where it came from.
Retried only on registry I/O errors (an unreachable MLflow server: ``RegistryUnavailable`` names the step it
stopped at), never on a rejected or invalid promotion. A retry first completes or abandons what the stopped
attempt left (``flywheel.registry.recover_interrupted``), so a promotion leaves one usable version, never an
alias on an unfinished one.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config import FlywheelConfig
from flywheel.records import AgentEvaluation, Candidate, Evaluation, Lineage, Release, version_tag
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


@task(name="current_agent")
def current_agent(cfg: FlywheelConfig) -> tuple[int | None, str | None]:
    """(version, local adapter folder) of the agent's champion, or (None, None) before its first release."""
    registry = Registry.for_agent(cfg)
    champion = registry.champion()
    if champion is None:
        return None, None
    version, folder = registry.fetch(champion.version)
    return version, str(folder)


@task(name="promote_agent", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_transient_io)
def promote_agent(cfg: FlywheelConfig, adapter: str, base_model: str, candidate: AgentEvaluation,
                  champion: AgentEvaluation, champion_version: int | None, dataset_card: dict) -> Release:
    """Register the agent candidate (``<model>-agent``, alias ``challenger``); ``champion`` moves when its held-out
    success rate beats the champion's (the starting policy before the first release) by more than
    ``agent.min_gain``."""
    gain = candidate.success_rate - champion.success_rate
    passed = gain > cfg.agent.min_gain
    reason = (f"held-out success {100 * candidate.success_rate:.1f} % {list(candidate.success_ci)} vs champion "
              f"{100 * champion.success_rate:.1f} % {list(champion.success_ci)} over {candidate.episodes} episodes: "
              f"gain {100 * gain:+.1f} points {'>' if passed else '<='} agent.min_gain {100 * cfg.agent.min_gain:.1f}")
    summary = {"stage": "agent", "domain": cfg.agent.domain, "success_rate": candidate.success_rate,
               "champion_success_rate": champion.success_rate, "pass_hat_k": candidate.pass_hat_k,
               "synthetic_kept": dataset_card.get("counts", {}).get("kept")}
    return Registry.for_agent(cfg).release(
        adapter, passed=passed, reason=reason, evaluated_champion=champion_version, summary=summary,
        lineage=Lineage(base_model=base_model, parent_champion_version=version_tag(champion_version)),
        require_fresh_evaluation=champion_version is not None)
