"""Agent training stage: SFT on a rejection-sampled synthetic dataset, and multi-turn PPO / RLOO / GRPO of a LoRA
policy in a mock environment, through ``PPOTrainer``.

``sft_agent`` fits a LoRA adapter (new, or continuing one) on every assistant turn of the dataset's chats
(``environments.synthetic.turn_examples``: the messages before the turn → the text the model writes for it, tool
calls in the Hermes format), loss on the turn only, through ``models.sft``.

RL (``train_agent_rl``):

Each update runs ``batch_size`` tasks × ``samples_per_prompt`` episodes of the current policy in lockstep
(``environments.lockstep.collect_batched``, one batched generation per turn across the running episodes), keeps
their exact token streams (``flywheel.agent_policy.TokenPolicy``), and gives ``PPOTrainer.learn`` one row per
episode: the opening prompt and every tool result and user turn are context (mask 0), only the tokens the policy
sampled are trained on (mask 1), and the episode's reward is the row's score, so the episodes of one task form the
leave-one-out / group baseline. An episode cut by ``max_steps`` gets ``missing_eos_penalty`` like a response cut
before EOS. Every update's episodes are kept as JSONL (``<out>/rollouts/update-NNNN.jsonl``), so a run can be
audited and its good trajectories rejection-sampled.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from environments.domain import Domain
from environments.lockstep import collect_batched
from environments.users import ScriptedUser, User
from flywheel.agent_policy import TokenPolicy, load_policy_model, model_sampler, streams_of, template_tools
from flywheel.config import FlywheelConfig

UNFINISHED = ("max_steps", "policy_error")  # end reasons of an episode that did not end on its own


@dataclass
class AgentRLResult:
    adapter_dir: str
    history: list[dict] = field(default_factory=list)  # metrics of every update
    rollouts_dir: str = ""

    @property
    def success_start(self) -> float:
        return self.history[0]["agent/success_rate"] if self.history else float("nan")

    @property
    def success_end(self) -> float:
        """Mean success over the last quarter of the updates."""
        tail = [m["agent/success_rate"] for m in self.history[-max(1, len(self.history) // 4):]]
        return sum(tail) / len(tail) if tail else float("nan")


def rejection_sample(base: str | Path, adapter: str | Path | None, domain: Domain, task_ids: Sequence[str],
                     out_dir: str | Path, *, trials: int, threshold: float, temperature: float, max_new_tokens: int,
                     max_steps: int, seed: int = 0, user_factory: Callable[[], User] = ScriptedUser) -> dict:
    """Play ``task_ids`` × ``trials`` with the policy, keep the episodes whose reward reaches ``threshold`` and
    export them (``<out_dir>/dataset.jsonl`` + ``card.json`` / ``card.md``); returns the card."""
    from environments.synthetic import export, read_trajectories, select

    out = Path(out_dir)
    model, tokenizer = load_policy_model(base, adapter)
    sample = model_sampler(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    version = str(adapter) if adapter else str(base)
    policy = TokenPolicy(tokenizer, sample, template_tools(tokenizer, domain.schemas()))
    collect_batched(domain, policy, list(task_ids), trials=trials,
                    out_path=out / "rollouts.jsonl", max_steps=max_steps, seed=seed, user_factory=user_factory,
                    model_version=version)
    selection = select(read_trajectories(out / "rollouts.jsonl"), threshold=threshold)
    return export(selection, out, source=str(out / "rollouts.jsonl"), filters={"threshold": threshold},
                  model_version=version)


def sft_agent(base: str | Path, dataset: str | Path, out_dir: str | Path, *, init_adapter: str | Path | None = None,
              epochs: int = 3, learning_rate: float | None = None, seed: int = 0, max_len: int = 1024,
              logger: Callable[[dict, int], None] | None = None):
    """LoRA SFT of ``base`` (from ``init_adapter`` when given) on the chats of ``dataset`` (a synthetic
    ``dataset.jsonl``); returns ``models.sft.SFTResult``."""
    from environments.synthetic import turn_examples
    from models.sft import SFTConfig, train_sft

    chats = [json.loads(line)["messages"] for line in Path(dataset).read_text().splitlines() if line.strip()]
    examples = turn_examples(chats)
    if not examples:
        raise ValueError(f"{dataset}: no assistant turn to learn from (is the dataset empty? check its card.json)")
    config = SFTConfig(seed=seed, epochs=epochs, max_len=max_len)
    if learning_rate is not None:
        config.learning_rate = learning_rate
    return train_sft(config, base, examples, out_dir, init_adapter=init_adapter, logger=logger, device="cpu")


def update_tasks(task_ids: Sequence[str], batch: int, step: int, seed: int) -> list[str]:
    """The tasks of update ``step``: consecutive slices of seeded permutations, each task once per pass."""
    out: list[str] = []
    position = step * batch
    while len(out) < min(batch, len(task_ids)):
        order = list(task_ids)
        random.Random(seed * 100003 + position // len(task_ids)).shuffle(order)
        candidate = order[position % len(task_ids)]
        if candidate not in out:
            out.append(candidate)
        position += 1
    return out


def train_agent_rl(config, base: str | Path, domain: Domain, task_ids: Sequence[str], out_dir: str | Path, *,
                   init_adapter: str | Path | None = None, max_steps: int = 10,
                   user_factory: Callable[[], User] = ScriptedUser,
                   logger: Callable[[dict, int], None] | None = None) -> AgentRLResult:
    """``config.steps`` updates of ``config`` (a ``models.config.PPOConfig``) on episodes of ``task_ids``; writes
    ``<out_dir>/adapter`` (one LoRA: warm start and RL delta merged, servable on ``base``)."""
    from models.trainer import PPOTrainer

    if not task_ids:
        raise ValueError("agent RL: no training tasks")
    out = Path(out_dir)
    rollouts = out / "rollouts"
    trainer = PPOTrainer(config, base, None, None, out, init_adapter=init_adapter, logger=None)
    cfg = trainer.cfg
    sample = model_sampler(trainer.ac.lm, trainer.tokenizer, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, role=lambda: trainer.ac.role("policy"))
    history, tools = [], template_tools(trainer.tokenizer, domain.schemas())
    for step in range(cfg.steps):
        tasks = update_tasks(task_ids, cfg.batch_size, step, cfg.seed)
        path = rollouts / f"update-{step:04d}.jsonl"
        summary = collect_batched(domain, TokenPolicy(trainer.tokenizer, sample, tools), tasks,
                                  trials=cfg.samples_per_prompt, out_path=path, max_steps=max_steps,
                                  seed=cfg.seed * 7919 + step, user_factory=user_factory)
        metrics = learn_from_episodes(trainer, path, generate_s=summary.seconds)
        metrics |= {"agent/success_rate": summary.success_rate, "agent/mean_reward": summary.mean_reward,
                    "agent/policy_share": summary.policy_share, "agent/policy_errors": summary.policy_errors}
        history.append(metrics)
        if logger is not None:
            logger({k: v for k, v in metrics.items() if k != "step"}, step + 1)
    trainer.ac.save_policy(out / "adapter", max_rank=cfg.max_adapter_rank)
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    return AgentRLResult(str(out / "adapter"), history, str(rollouts))


def learn_from_episodes(trainer, rollouts_path: str | Path, generate_s: float = 0.0) -> dict:
    """One ``PPOTrainer.learn`` update on the episodes of a collected JSONL (sorted by task, then trial)."""
    import torch

    from environments.synthetic import read_trajectories
    from models.episodes import episode_batch

    records = read_trajectories(rollouts_path)
    if any(not r["turns"] for r in records):
        bad = next(r for r in records if not r["turns"])
        raise ValueError(f"{rollouts_path}: episode {bad['task_id']}/{bad['trial']} has no policy turn "
                         f"({bad['end_reason']})")
    input_ids, attention_mask, mask = episode_batch(streams_of(records), trainer.tokenizer.pad_token_id)
    scores = torch.tensor([float(r["reward"]) for r in records])  # (B,)
    ended = torch.tensor([str(r["end_reason"]).split(":")[0] not in UNFINISHED for r in records])  # (B,)
    return trainer.learn(input_ids, attention_mask, mask, scores, ended, generate_s=generate_s)


@task(name="rejection_sample_episodes")
def rejection_sample_task(cfg: FlywheelConfig, base: str, adapter: str | None, out_dir: str) -> dict:
    """The agent flow's data step: the starting policy on every train task, the good episodes as a dataset."""
    from environments import load_builtin

    domain, a = load_builtin(cfg.agent.domain), cfg.agent
    return rejection_sample(base, adapter, domain, domain.split["train"], out_dir, trials=a.rollout_trials,
                            threshold=a.success_threshold, temperature=a.temperature,
                            max_new_tokens=a.max_new_tokens, max_steps=a.max_steps, seed=cfg.train.seed + 2)


@task(name="sft_agent")
def sft_agent_task(cfg: FlywheelConfig, base: str, dataset: str, out_dir: str, init_adapter: str | None) -> str:
    """SFT on the synthetic dataset; returns the adapter folder."""
    return sft_agent(base, dataset, out_dir, init_adapter=init_adapter, epochs=cfg.agent.sft_epochs,
                     seed=cfg.train.seed).adapter_dir


@task(name="train_agent")
def train_agent(cfg: FlywheelConfig, base: str, out_dir: str, init_adapter: str | None) -> AgentRLResult:
    """The agent flow's RL step: ``train_agent_rl`` with the ``train:`` knobs and the ``agent:`` sizes."""
    from environments import load_builtin
    from models.config import PPOConfig

    a = cfg.agent
    config = PPOConfig(**{**cfg.train.ppo_kwargs(), "steps": a.rl_steps, "batch_size": a.tasks_per_update,
                          "samples_per_prompt": a.episodes_per_task, "max_new_tokens": a.max_new_tokens,
                          "temperature": a.temperature})
    domain = load_builtin(a.domain)
    return train_agent_rl(config, base, domain, domain.split["train"], out_dir, init_adapter=init_adapter,
                          max_steps=a.max_steps)
