"""The agent flow: base → evaluate the champion → rejection-sampled dataset → SFT → RL → evaluate → promote.

Runs the project's agent in its mock environment (``agent.domain``) with the scripted user: the champion (the bare
base before the first release) is measured on the held-out test tasks; it plays every train task
``agent.rollout_trials`` times and the episodes that passed become a synthetic chat dataset with its card; a LoRA
is fitted on it (continuing the champion's adapter), then trained with multi-turn RL (the ``train:`` estimator,
``agent.rl_steps`` updates); the candidate is measured on the same test tasks and released to the registered
model ``<model>-agent`` (``challenger``; ``champion`` when it beats the champion's success rate). Every stage is a
Prefect task of ``tasks/``; each writes under ``<state>/agent/<run>/``.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flywheel.config import FlywheelConfig, load_config
from flywheel.records import AgentEvaluation, Release
from tasks.agent_evaluate import evaluate_agent_task
from tasks.agent_train import rejection_sample_task, sft_agent_task, train_agent
from tasks.bootstrap import build_agent_base
from tasks.promote import current_agent, promote_agent

__all__ = ["AgentRunRecord", "agent_training"]


class AgentRunRecord(BaseModel):
    """What one agent-training run did."""

    run_dir: str
    base_model: str
    champion_version: int | None
    champion: AgentEvaluation
    synthetic: dict
    candidate: AgentEvaluation
    candidate_adapter: str
    rl_curve: list[float]
    release: Release


@flow(name="agent-training")
def agent_training(config: str | Path | FlywheelConfig | None = None) -> AgentRunRecord:
    cfg = config if isinstance(config, FlywheelConfig) else load_config(config)
    log = get_run_logger()
    run = cfg.state / "agent" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    base = build_agent_base(cfg)
    version, adapter = current_agent(cfg)
    champion = evaluate_agent_task(cfg, base, adapter, str(run / "eval-champion.jsonl"))
    log.info("champion v%s: held-out success %.3f", version, champion.success_rate)
    card = rejection_sample_task(cfg, base, adapter, str(run / "synthetic"))
    candidate_adapter = adapter
    if cfg.agent.sft_epochs and card["counts"]["kept"]:
        candidate_adapter = sft_agent_task(cfg, base, str(run / "synthetic" / "dataset.jsonl"), str(run / "sft"),
                                           adapter)
    curve: list[float] = []
    if cfg.agent.rl_steps:
        rl = train_agent(cfg, base, str(run / "rl"), candidate_adapter)
        candidate_adapter, curve = rl.adapter_dir, [m["agent/success_rate"] for m in rl.history]
    if candidate_adapter is None:
        raise ValueError(f"agent-training: nothing was trained (no episode of the starting policy passed, "
                         f"{card['counts']}, and agent.rl_steps is 0)")
    candidate = evaluate_agent_task(cfg, base, candidate_adapter, str(run / "eval-candidate.jsonl"))
    release = promote_agent(cfg, candidate_adapter, base, candidate, champion, version, card)
    record = AgentRunRecord(run_dir=str(run), base_model=base, champion_version=version, champion=champion,
                            synthetic=card, candidate=candidate, candidate_adapter=candidate_adapter,
                            rl_curve=curve, release=release)
    create_markdown_artifact(key="agent-training", markdown=_summary(record), description="agent training run")
    return record


def _summary(r: AgentRunRecord) -> str:
    def row(name: str, e: AgentEvaluation) -> str:
        (lo, hi), k = e.success_ci, max(e.pass_hat_k)
        return f"| {name} | {100 * e.success_rate:.1f} % [{lo:.1f}, {hi:.1f}] | pass^{k} {e.pass_hat_k[k]:.3f} |"

    return "\n".join([
        "| policy | held-out success (95 % CI) | pass^k |", "|---|---|---|",
        row(f"champion v{r.champion_version}", r.champion), row("candidate", r.candidate), "",
        f"synthetic dataset: {r.synthetic['counts']['kept']} of {r.synthetic['counts']['trajectories_in']} episodes",
        f"release: {r.release.model_name} v{r.release.version} {r.release.decision}: {r.release.reason}",
    ])
