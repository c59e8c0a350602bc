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
from pydantic import BaseModel

from environments.domain import Domain
from environments.lockstep import collect_batched
from environments.users import ScriptedUser, User
from flywheel.agent_policy import TokenPolicy, model_sampler
from flywheel.stats import wilson_ci


class AgentEvaluation(BaseModel):
    """How a policy did on a task set."""

    adapter: str | None
    tasks: int
    episodes: int
    success_rate: float  # share of episodes that succeeded
    success_ci: tuple[float, float]  # 95 % Wilson interval, in percent
    mean_reward: float
    pass_hat_k: dict[int, float]  # k -> pass^k
    success_by_task: dict[str, list[bool]]
    end_reasons: dict[str, int]
    episodes_uri: str


def load_policy_model(base: str | Path, adapter: str | Path | None):
    """(model, tokenizer) of ``base`` with ``adapter`` applied (merged for sampling), in eval mode on the CPU."""
    from models.policy import load_base

    model, tokenizer = load_base(base, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval(), tokenizer


def evaluate_agent(base: str | Path, adapter: str | Path | None, domain: Domain, task_ids: Sequence[str],
                   out_path: str | Path, *, trials: int = 4, temperature: float = 0.7, max_new_tokens: int = 96,
                   max_steps: int = 10, seed: int = 0,
                   user_factory: Callable[[], User] = ScriptedUser) -> AgentEvaluation:
    """Play ``task_ids`` × ``trials`` with the policy and summarise (see module doc)."""
    model, tokenizer = load_policy_model(base, adapter)
    sample = model_sampler(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    summary = collect_batched(domain, TokenPolicy(tokenizer, sample), list(task_ids), trials=trials,
                              out_path=out_path, max_steps=max_steps, seed=seed, user_factory=user_factory,
                              model_version=str(adapter) if adapter else "base")
    return AgentEvaluation(
        adapter=str(adapter) if adapter else None, tasks=len(task_ids), episodes=summary.episodes,
        success_rate=summary.success_rate, success_ci=wilson_ci(summary.successes, summary.episodes),
        mean_reward=summary.mean_reward, pass_hat_k={k: summary.pass_hat_k(k) for k in range(1, trials + 1)},
        success_by_task=summary.success_by_task, end_reasons=summary.end_reasons, episodes_uri=str(out_path))


@task(name="evaluate_agent")
def evaluate_agent_task(base: str, adapter: str | None, domain: Domain, task_ids: list[str], out_path: str,
                        trials: int = 4, temperature: float = 0.7, max_steps: int = 10) -> AgentEvaluation:
    """Prefect task around ``evaluate_agent`` (the agent flow's evaluate stage)."""
    return evaluate_agent(base, adapter, domain, task_ids, out_path, trials=trials, temperature=temperature,
                          max_steps=max_steps)
