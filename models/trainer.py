"""The PPO loop: rollout → score → KL-penalised returns → advantages (rloo | grpo | gae) → updates, with checkpoints
and exact resume.

``train_ppo(config, base, prompts, reward_fn, out_dir, ...)`` runs in a plain process (a Prefect task) and unchanged
under ``accelerate launch --num_processes N`` / ``torchrun`` (DDP; gloo on CPU): each process samples its own share
of the prompts, gradients are averaged, rank 0 logs and writes.

Departures from the textbook (see ``models/ppo.py`` for the per-function details):
* ONE advantage estimator per run, chosen by name; the critic-free ones (``rloo``, ``grpo``) create no value
  adapter, head, loss or metrics; with ``gae``, one optimizer holds the policy adapter, the value adapter and the
  value head and loss = pg + vf_coef·v − ent_coef·H;
* with one PPO epoch and one minibatch the rollout's old log-probs/values are the detached outputs of the training
  forward itself (exactly equal, one forward pass saved per role), and the update is REINFORCE with a baseline;
* ``learning_rate=None`` is resolved from the base's width once it is loaded (``default_learning_rate``);
* when PPO starts from a warm-start adapter (SFT/RFT), that adapter is the reference policy and stays frozen; the
  saved policy is one LoRA (warm start and PPO delta concatenated), so it serves on the original base.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import resource
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from models.checkpoint import load_latest, save_checkpoint, set_rng_state
from models.config import PPOConfig, default_learning_rate
from models.policy import ActorCritic, load_base
from models.ppo import (
    AdaptiveKLController,
    eos_penalty,
    explained_variance,
    gae,
    grpo_advantages,
    kl_penalized_rewards,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    rloo_advantages,
    value_loss,
)
from models.rollout import HFRolloutEngine

__all__ = ["PPOConfig", "PPOResult", "PPOTrainer", "default_learning_rate", "train_ppo"]
RewardFn = Callable[[list[list[dict]], list[str]], list[float]]
log = logging.getLogger(__name__)


@dataclass
class PPOResult:
    adapter_dir: str  # policy LoRA (loads with PeftModel.from_pretrained on the base)
    value_dir: str | None  # value adapter + score_head.safetensors; None for critic-free estimators (rloo, grpo)
    steps: int
    history: list[dict]  # metrics of every update
    reward_start: float  # mean score of the first update
    reward_end: float  # mean score over the last quarter of updates
    config: PPOConfig  # the config the run used, learning_rate resolved


@dataclass
class Experience:
    """One rollout batch, ready for the update (rows grouped by prompt, ``samples_per_prompt`` each)."""

    input_ids: Tensor  # (B, L) prompt (left-padded) + response tokens
    attention_mask: Tensor  # (B, L)
    mask: Tensor  # (B, R) 1.0 on response tokens up to and including the first EOS
    old_logprobs: Tensor  # (B, R) log π_old(a_t | s_t) of the rollout policy
    advantages: Tensor  # (B, R)
    old_values: Tensor | None  # (B, R) V_old(s_t); None without a critic
    returns: Tensor | None  # (B, R) value targets; None without a critic
    trunk: Tensor | None  # (B, L, H) reference hidden state at the first value layer, if the value pass starts there


def _dist() -> tuple[int, int]:
    """(rank, world size); joins the process group that accelerate/torchrun describe in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _prompt_indices(step: int, n: int, per_rank: int, rank: int, world: int, seed: int) -> list[int]:
    """Data order: a stream of seeded permutations of the prompts; update ``step`` reads its slice of it."""
    out = []
    for j in range(rank, per_rank * world, world):
        pos = step * per_rank * world + j
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + pos // n))
        out.append(int(perm[pos % n]))
    return out


def _peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss can carry a parent's peak across fork+exec)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hidden_size_of(model) -> int:
    """The width of a Hugging Face model (``hidden_size``, or the GPT-2 / T5 spellings)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    raise ValueError(f"{type(cfg).__name__}: no hidden_size to derive learning_rate from; set it explicitly")


def advantages_and_returns(cfg: PPOConfig, scores: Tensor, kl: Tensor, mask: Tensor, old_values: Tensor | None,
                           kl_coef: float) -> tuple[Tensor, Tensor | None]:
    """Advantages (B, R) of the configured estimator, and value targets (B, R) for the critic (None without one).

    scores: (B,) sequence scores after the EOS trick; kl, mask, old_values: (B, R).
    rloo: leave-one-out advantages scaled to unit std over the batch (mean kept, so the baseline stays unbiased);
    grpo: already unit scale per group; gae: per-token GAE on the KL-penalised rewards, whitened.
    """
    if cfg.advantage == "rloo":
        advantages = rloo_advantages(scores, kl, mask, kl_coef, cfg.samples_per_prompt)  # (B, R)
        return masked_whiten(advantages, mask, shift_mean=False), None
    if cfg.advantage == "grpo":
        return grpo_advantages(scores, kl, mask, kl_coef, cfg.samples_per_prompt), None  # (B, R)
    rewards = kl_penalized_rewards(scores, kl, mask, kl_coef)  # (B, R)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(old_values, rewards, mask, cfg.gamma, cfg.lam)  # (B, R), (B, R)
    return masked_whiten(advantages, mask), returns


class PPOTrainer:
    """PPO on a LoRA policy. With ``prompts`` and ``reward_fn`` it samples its own single-turn rollouts
    (``train``/``train_step``); with both None it learns from rollouts sampled elsewhere (``learn``: multi-turn
    agent episodes)."""

    def __init__(self, config: PPOConfig, base: str | Path, prompts: list[list[dict]] | None,
                 reward_fn: RewardFn | None, out_dir: str | Path, *, init_adapter: str | Path | None = None,
                 reward_model_dir: str | Path | None = None, logger: Callable[[dict, int], None] | None = None,
                 dtype: str = "float32", device: str = "auto"):
        if prompts is not None and not prompts:
            raise ValueError("prompts: empty, PPO needs at least one prompt")
        self.prompts, self.reward_fn, self.logger = prompts, reward_fn, logger
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.rank, self.world = _dist()
        torch.manual_seed(config.seed)  # identical LoRA init on every rank
        lm, self.tokenizer = load_base(base, dtype, device)
        if config.learning_rate is None:
            config = dataclasses.replace(config, learning_rate=default_learning_rate(hidden_size_of(lm)))
            log.info("learning_rate = %g (default_learning_rate of hidden_size %d)", config.learning_rate,
                     hidden_size_of(lm))
        self.cfg = config
        self.ac = ActorCritic(lm, r=config.lora_r, alpha=config.lora_alpha, target_modules=config.lora_target_modules,
                              init_adapter=init_adapter, value_layers=config.value_layers,
                              with_value=config.with_value)
        if reward_model_dir is not None:
            self.ac.attach_reward_model(reward_model_dir)
        if config.gradient_checkpointing:
            self.ac.checkpoint_layers()
        self.model = self.ac
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.ac)
        self.params = [p for p in self.ac.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, eps=1e-5, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
        if config.rollout_engine not in ("hf", "vllm"):
            raise ValueError(f"rollout_engine: expected 'hf' or 'vllm', got {config.rollout_engine!r}")
        if config.rollout_engine == "vllm" and prompts is not None:  # a server from its own venv, stopped by close()
            from models.vllm_engine import VLLMRolloutEngine
            on_gpu = next(self.ac.parameters()).device.type == "cuda"
            self.engine = VLLMRolloutEngine(
                self.ac, self.tokenizer, base, self.out / f"vllm-rank{self.rank}", max_prompt_len=config.max_prompt_len,
                max_new_tokens=config.max_new_tokens, python=config.vllm_python, dtype=dtype,
                gpu_memory_utilization=config.vllm_gpu_memory_utilization if on_gpu else None,
                extra_args=config.vllm_extra_args, startup_timeout_s=config.vllm_startup_timeout_s)
        else:  # hf; a learn-only trainer (prompts=None) never samples, so it starts no server
            self.engine = HFRolloutEngine(self.ac, self.tokenizer, config.max_prompt_len)
        self.step, self.history = 0, []
        torch.manual_seed(config.seed + 1 + self.rank)  # sampling differs across ranks
        random.seed(config.seed + self.rank)
        np.random.seed(config.seed + self.rank)

    def _lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.cfg.warmup_steps) if self.cfg.warmup_steps else 1.0
        decay = max(0.0, 1 - step / self.cfg.steps) if self.cfg.lr_schedule == "linear" else 1.0
        return warm * decay

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict:
        """One update on prompts of the training set: sample, score with ``reward_fn``, then ``learn``."""
        if self.prompts is None or self.reward_fn is None:
            raise ValueError("this trainer was built without prompts and reward_fn: it learns from given rollouts, "
                             "call learn(input_ids, attention_mask, mask, scores, ended)")
        cfg, t0 = self.cfg, time.perf_counter()
        # 1. prompts of this update (this rank's share of the global batch), each repeated samples_per_prompt times
        idx = _prompt_indices(self.step, len(self.prompts), cfg.batch_size, self.rank, self.world, cfg.seed)
        prompts = [self.prompts[i] for i in idx for _ in range(cfg.samples_per_prompt)]
        # 2. rollout: sample responses with the policy role (KV cache, left padding)
        rollout = self.engine.generate(prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                       cfg.min_p)
        t_gen = time.perf_counter() - t0
        # 3. score: the injected online reward
        raw_scores = torch.tensor(self.reward_fn(prompts, rollout.completions), dtype=torch.float32)  # (B,)
        if len(raw_scores) != len(prompts):
            raise ValueError(f"reward_fn returned {len(raw_scores)} scores for {len(prompts)} completions")
        return self.learn(rollout.input_ids, rollout.attention_mask, rollout.response_mask, raw_scores,
                          rollout.has_eos, generate_s=t_gen, started=t0, rollout_logprobs=rollout.logprobs)

    def close(self) -> None:
        """Stop the rollout engine's server, if it has one (vLLM); idempotent."""
        if hasattr(self.engine, "close"):
            self.engine.close()

    @contextmanager
    def _closed_on_error(self):
        try:
            yield
        except BaseException:
            self.close()
            raise

    def learn(self, input_ids: Tensor, attention_mask: Tensor, mask: Tensor, raw_scores: Tensor, ended: Tensor,
              generate_s: float = 0.0, started: float | None = None, rollout_logprobs: Tensor | None = None) -> dict:
        """One update on a rollout batch sampled by the current policy; returns the update's metrics.

        input_ids, attention_mask: (B, L), every row's sampled tokens within its last R positions; mask: (B, R)
        1.0 on the tokens the policy sampled, 0 elsewhere (padding; in a multi-turn episode also the tool results
        and user turns between its messages, so they are context, never trained on); raw_scores: (B,) one score
        per row; ended: (B,) bool, the row ended properly (EOS / a terminal state), else ``missing_eos_penalty``
        applies. Rows are grouped by prompt (or task), ``samples_per_prompt`` consecutive rows each.
        ``generate_s`` / ``started``: sampling seconds and the update's start (``perf_counter``), for the timings.
        ``rollout_logprobs``: (B, R) the sampler's own log-probs of the response tokens (vLLM), compared with the
        trainer's: ``rollout/logprob_abs_diff`` (mean |Δ log p| per response token), ``rollout/logprob_max_abs_diff``.
        """
        cfg, ac = self.cfg, self.ac
        t0 = time.perf_counter() if started is None else started
        R = mask.shape[1]
        if ac.reward_head is not None:  # the shared-base reward model adds its score
            raw_scores = raw_scores + cfg.reward_model_weight * ac.reward_scores(input_ids, attention_mask).cpu()
        scores = eos_penalty(raw_scores, ended.cpu(), cfg.missing_eos_penalty).to(mask.device)  # (B,)
        # 4. reference log-probs (adapter disabled / warm start only), rollout log-probs (and values)
        ref_logprobs, trunk = ac.reference_pass(input_ids, attention_mask, R, cfg.temperature)  # (B, R), (B, L, H)|None
        fused = None
        if cfg.fused_first_pass:
            fused = self.model(input_ids, attention_mask, R, cfg.temperature, trunk)  # with grad, reused in phase 6
            old_logprobs, old_values = fused[0].detach(), None if fused[2] is None else fused[2].detach()
        else:
            with torch.no_grad():
                old_logprobs, _, old_values = ac(input_ids, attention_mask, R, cfg.temperature, trunk)
        # 5. KL-penalised returns → advantages (and value targets for the critic)
        kl = kl_per_token(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, R)
        advantages, returns = advantages_and_returns(cfg, scores, kl, mask, old_values, self.kl_ctl.value)
        exp = Experience(input_ids, attention_mask, mask, old_logprobs, advantages, old_values, returns, trunk)
        # 6. PPO epochs × minibatches × micro-batches
        stats, grad_norm = self._update(exp, fused)
        # 7. KL controller and learning-rate schedule
        mean_kl = float(kl.sum(1).mean())
        self.kl_ctl.update(mean_kl, len(input_ids) * self.world)
        self.scheduler.step()
        self.step += 1
        # 8. metrics (averaged over ranks)
        dt = time.perf_counter() - t0 + (generate_s if started is None else 0.0)
        metrics = {
            "objective/scores": float(raw_scores.mean()), "objective/scores_std": float(raw_scores.std()),
            "objective/kl": mean_kl, "objective/non_score_reward": float((-self.kl_ctl.value * kl).sum(1).mean()),
            "objective/kl_coef": self.kl_ctl.value, "policy/entropy": float(np.mean(stats["entropy"])),
            "losses/policy_loss": float(np.mean(stats["pg_loss"])), "grad_norm": float(grad_norm),
            "policy/clipfrac": float(np.mean(stats["clipfrac"])),
            "policy/approx_kl": float(np.mean(stats["approx_kl"])),
            "charts/response_length": float(mask.sum(1).mean()),
            "charts/eos_fraction": float(ended.float().mean()),
            "charts/lr": self.scheduler.get_last_lr()[0], "charts/tokens_per_s": float(mask.sum()) * self.world / dt,
            "charts/step_time_s": dt, "charts/generate_time_s": generate_s, "charts/peak_rss_mb": _peak_rss_mb(),
        }
        if rollout_logprobs is not None:  # the sampler's log-probs against the trainer's, same tokens
            gap = (old_logprobs - rollout_logprobs.to(old_logprobs.device)).abs() * mask  # (B, R)
            metrics |= {"rollout/logprob_abs_diff": float(gap.sum() / mask.sum().clamp(min=1)),
                        "rollout/logprob_max_abs_diff": float(gap.max())}
        if ac.with_value:
            metrics |= {"losses/value_loss": float(np.mean(stats["v_loss"])),
                        "val/clipfrac": float(np.mean(stats["vf_clipfrac"])),
                        "val/explained_variance": float(explained_variance(old_values, returns, mask))}
        if self.world > 1:
            vec = torch.tensor(list(metrics.values()), dtype=torch.float64)
            dist.all_reduce(vec)
            metrics = dict(zip(metrics, (vec / self.world).tolist()))
        metrics["step"] = self.step
        return metrics

    def _update(self, exp: Experience, fused: tuple | None) -> tuple[dict[str, list[float]], Tensor]:
        """The optimizer steps on one rollout batch; ``fused`` = the first micro-batch's forward, when already run."""
        cfg, n = self.cfg, len(exp.input_ids)
        R = exp.mask.shape[1]
        stats: dict[str, list[float]] = {}
        grad_norm = torch.tensor(0.0)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n) if cfg.num_minibatches > 1 else torch.arange(n)
            for start in range(0, n, cfg.minibatch_size):
                mb = order[start:start + cfg.minibatch_size]
                for mstart in range(0, len(mb), cfg.micro_batch_size):
                    b = mb[mstart:mstart + cfg.micro_batch_size]
                    last = mstart + cfg.micro_batch_size >= len(mb)
                    with (nullcontext() if last or self.world == 1 else self.model.no_sync()):
                        if fused is None:
                            fused = self.model(exp.input_ids[b], exp.attention_mask[b], R, cfg.temperature,
                                               None if exp.trunk is None else exp.trunk[b])
                        loss, mb_stats = self._loss(*fused, exp, b)
                        fused = None
                        (loss / cfg.grad_accum).backward()
                    for key, v in mb_stats.items():
                        stats.setdefault(key, []).append(float(v))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if cfg.early_stop_kl is not None and stats["approx_kl"][-1] > cfg.early_stop_kl:
                break
        return stats, grad_norm

    def _loss(self, logprobs: Tensor, entropy: Tensor, values: Tensor | None, exp: Experience,
              b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """pg_loss − ent_coef·H (+ vf_coef·v_loss with a critic) on rows ``b``; the detached stats."""
        cfg, mask = self.cfg, exp.mask[b]
        pg_loss, clipfrac, approx_kl = policy_loss(logprobs, exp.old_logprobs[b], exp.advantages[b], mask,
                                                   cfg.clip_coef)
        ent = masked_mean(entropy, mask)
        loss = pg_loss - cfg.ent_coef * ent
        stats = {"pg_loss": pg_loss, "entropy": ent, "clipfrac": clipfrac, "approx_kl": approx_kl}
        if values is not None:
            v_loss, vf_clipfrac = value_loss(values, exp.old_values[b], exp.returns[b], mask, cfg.vf_clip_coef)
            loss = loss + cfg.vf_coef * v_loss
            stats |= {"v_loss": v_loss, "vf_clipfrac": vf_clipfrac}
        return loss, {k: v.detach() for k, v in stats.items()}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        state = None
        if self.rank == 0:
            state = {"step": self.step, "policy": self.ac.adapter_state("policy"),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "kl_ctl": self.kl_ctl.state_dict(), "history": self.history, "config": asdict(self.cfg)}
            if self.ac.with_value:
                state |= {"value": self.ac.adapter_state("value"), "value_head": self.ac.value_head.state_dict()}
        save_checkpoint(self.ckpt_dir, self.step, state, self.rank, self.world, self.cfg.keep_checkpoints)

    def load_checkpoint(self) -> bool:
        found = load_latest(self.ckpt_dir, self.rank)
        if found is None:
            return False
        state, rng = found
        self.ac.load_adapter_state("policy", state["policy"])
        if self.ac.with_value:
            self.ac.load_adapter_state("value", state["value"])
            self.ac.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.step, self.history = state["step"], state["history"]
        set_rng_state(rng)
        return True

    # ------------------------------------------------------------------ the run
    def train(self, resume: bool = True, on_step_end: Callable[[int, dict], None] | None = None) -> PPOResult:
        cfg = self.cfg
        if resume:
            self.load_checkpoint()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "ppo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
            if self.logger is not None and self.step == 0:
                self.logger({f"config/{k}": v for k, v in asdict(cfg).items() if isinstance(v, (int, float))}, 0)
        bar = _progress(cfg.progress and self.rank == 0, cfg.steps, self.step)
        with bar, self._closed_on_error():
            while self.step < cfg.steps:
                metrics = self.train_step()
                self.history.append(metrics)
                if self.rank == 0:
                    with open(self.out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                    if self.logger is not None:
                        self.logger({k: v for k, v in metrics.items() if k != "step"}, self.step)
                bar.advance(metrics)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if on_step_end is not None:
                    on_step_end(self.step, metrics)
        value_dir = str(self.out / "value") if self.ac.with_value else None
        if self.rank == 0:
            self.ac.save_policy(self.out / "adapter", max_rank=self.cfg.max_adapter_rank)
            if value_dir is not None:
                self.ac.save_value(value_dir)
        scores = [m["objective/scores"] for m in self.history]
        tail = scores[-max(1, len(scores) // 4):]
        return PPOResult(str(self.out / "adapter"), value_dir, self.step, self.history,
                         scores[0] if scores else float("nan"), float(np.mean(tail)) if tail else float("nan"), cfg)


class _progress:
    """A rich progress bar showing the step, reward and KL (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.p = Progress(TextColumn("PPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                              TimeRemainingColumn(), transient=False)
            self.p.__enter__()
            self.task = self.p.add_task("", total=self.total, completed=self.done)
        return self

    def advance(self, m: dict) -> None:
        if self.enabled:
            self.p.update(self.task, advance=1, description=f"reward {m['objective/scores']:+.3f} "
                                                            f"kl {m['objective/kl']:.3f}")

    def __exit__(self, *exc):
        if self.enabled:
            self.p.__exit__(*exc)


def train_ppo(config: PPOConfig, base: str | Path, prompts: list[list[dict]], reward_fn: RewardFn,
              out_dir: str | Path, *, init_adapter: str | Path | None = None,
              reward_model_dir: str | Path | None = None, logger: Callable[[dict, int], None] | None = None,
              resume: bool = True, dtype: str = "float32",
              device: str = "auto", on_step_end: Callable[[int, dict], None] | None = None) -> PPOResult:
    """Train a LoRA policy with PPO on ``prompts`` scored by ``reward_fn``; writes ``out_dir/adapter`` (and
    ``out_dir/value`` with a critic) and returns a :class:`PPOResult`. Resumes from ``out_dir/checkpoints`` when one
    exists (``resume=True``)."""
    trainer = PPOTrainer(config, base, prompts, reward_fn, out_dir, init_adapter=init_adapter,
                         reward_model_dir=reward_model_dir, logger=logger, dtype=dtype, device=device)
    try:
        return trainer.train(resume=resume, on_step_end=on_step_end)
    finally:
        trainer.close()  # the vLLM server, also when the run fails
