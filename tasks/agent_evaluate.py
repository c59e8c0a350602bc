"""Agent evaluation stage: success on held-out tasks, with a confidence interval and pass^k, as τ-bench reports it.

A policy (a base and optionally a LoRA adapter) plays every held-out task ``trials`` times in lockstep
(``environments.lockstep.collect_batched``); an episode succeeds when every check of its task's
``reward_basis`` passed. The result carries the success rate with its 95 % Wilson interval (over episodes),
pass^k for k = 1..trials (all of k trials of a task succeed, unbiased estimator) and each task's successes, and
the episodes stay as JSONL next to it for audit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from prefect import task

from environments.domain import Domain
from environments.lockstep import collect_batched
from environments.users import ScriptedUser, User
from flywheel.agent_policy import TokenPolicy, load_policy_model, model_sampler, template_tools
from flywheel.config import FlywheelConfig
from flywheel.records import AgentEvaluation
from flywheel.stats import wilson_ci


def evaluate_agent(base: str | Path, adapter: str | Path | None, domain: Domain, task_ids: Sequence[str],
                   out_path: str | Path, *, trials: int = 4, temperature: float = 0.7, max_new_tokens: int = 96,
                   max_steps: int = 10, seed: int = 0,
                   user_factory: Callable[[], User] = ScriptedUser) -> AgentEvaluation:
    """Play ``task_ids`` × ``trials`` with the policy and summarise (see module doc)."""
    model, tokenizer = load_policy_model(base, adapter)
    sample = model_sampler(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    policy = TokenPolicy(tokenizer, sample, template_tools(tokenizer, domain.schemas()))
    summary = collect_batched(domain, policy, list(task_ids), trials=trials,
                              out_path=out_path, max_steps=max_steps, seed=seed, user_factory=user_factory,
                              model_version=str(adapter) if adapter else "base")
    return AgentEvaluation(
        adapter=str(adapter) if adapter else None, tasks=len(task_ids), episodes=summary.episodes,
        success_rate=summary.success_rate, success_ci=wilson_ci(summary.successes, summary.episodes),
        mean_reward=summary.mean_reward, pass_hat_k={k: summary.pass_hat_k(k) for k in range(1, trials + 1)},
        success_by_task=summary.success_by_task, end_reasons=summary.end_reasons, episodes_uri=str(out_path))


@task(name="evaluate_agent")
def evaluate_agent_task(cfg: FlywheelConfig, base: str, adapter: str | None, out_path: str) -> AgentEvaluation:
    """The agent flow's evaluate stage: ``evaluate_agent`` on the domain's held-out test split (``agent.*``)."""
    from environments import load_builtin

    domain, a = load_builtin(cfg.agent.domain), cfg.agent
    return evaluate_agent(base, adapter, domain, domain.split["test"], out_path, trials=a.eval_trials,
                          temperature=a.temperature, max_new_tokens=a.max_new_tokens, max_steps=a.max_steps,
                          seed=cfg.train.seed + 1)
