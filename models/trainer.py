"""The PPO loop: rollout → score → KL-penalised rewards → GAE → clipped updates, with checkpoints and exact resume.

``train_ppo(config, base, prompts, reward_fn, out_dir, ...)`` runs in a plain process (a Prefect task) and unchanged
under ``accelerate launch --num_processes N`` / ``torchrun`` (DDP; gloo on CPU): each process samples its own share
of the prompts, gradients are averaged, rank 0 logs and writes.

Departures from the textbook (see ``models/ppo.py`` for the per-function details):
* one optimizer for the policy adapter, the value adapter and the value head; loss = pg + vf_coef·v − ent_coef·H;
* with one PPO epoch and one minibatch the rollout's old log-probs/values are the detached outputs of the training
  forward itself (exactly equal, one forward pass saved per role);
* when PPO starts from a warm-start adapter (SFT/RFT), that adapter is the reference policy and stays frozen; the
  saved policy is one LoRA (warm start and PPO delta concatenated), so it serves on the original base.
"""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from models.policy import ActorCritic, load_base
from models.ppo import (AdaptiveKLController, eos_penalty, explained_variance, gae, kl_penalized_rewards,
                        kl_per_token, masked_mean, masked_whiten, policy_loss, rloo_advantages, value_loss)
from models.rollout import HFRolloutEngine

RewardFn = Callable[[list[list[dict]], list[str]], list[float]]


@dataclass
class PPOConfig:
    """Every knob of a PPO run; defaults are the ones measured to work on the tiny demo model (2 CPU cores)."""

    seed: int = 0  # seed for LoRA init, data order and sampling (rank r samples with seed + r)
    steps: int = 40  # PPO updates; each = one rollout batch
    batch_size: int = 16  # prompts per rollout batch, per process
    samples_per_prompt: int = 2  # responses sampled for each prompt
    max_new_tokens: int = 32  # response length cap; responses without EOS get `missing_eos_penalty`
    max_prompt_len: int = 256  # prompts are left-truncated to this many tokens
    temperature: float = 1.0  # sampling temperature; log-probs use the same scaling
    top_p: float = 1.0  # nucleus sampling
    ppo_epochs: int = 4  # passes over each rollout batch
    num_minibatches: int = 2  # optimizer steps per epoch
    grad_accum: int = 1  # micro-batches per minibatch (gradient accumulation)
    learning_rate: float = 3e-3  # AdamW learning rate (LoRA on a tiny model tolerates a large one)
    lr_schedule: str = "constant"  # constant | linear (decay to 0 at `steps`)
    warmup_steps: int = 0  # linear warm-up updates
    max_grad_norm: float = 1.0  # global gradient clipping
    clip_coef: float = 0.2  # PPO ratio clip ε
    vf_clip_coef: float = 0.2  # value clip around the rollout values
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # entropy bonus
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    init_kl_coef: float = 0.05  # β of the per-token KL penalty
    target_kl: float | None = None  # adaptive β towards this KL per sequence (None = fixed β)
    kl_horizon: int = 10000  # adaptive controller horizon
    kl_estimator: str = "k1"  # per-token KL in the reward: k1 | k3
    early_stop_kl: float | None = None  # stop the PPO epochs of a batch once approx-KL exceeds this
    whiten_rewards: bool = False  # whiten the shaped rewards (mean kept)
    advantage: str = "gae"  # gae (value head, per-token GAE) | rloo (leave-one-out over samples_per_prompt; value unused)
    missing_eos_penalty: float | None = -1.0  # the EOS trick: score of a response cut before EOS (None = off)
    lora_r: int = 8  # LoRA rank of the policy and value adapters
    lora_alpha: int = 16  # LoRA alpha
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    max_adapter_rank: int | None = 16  # rank cap of the saved candidate (warm start + PPO delta, SVD re-factored); None = r₁+r₂
    value_layers: int | None = None  # value adapter only on the top N layers (shorter backward); None = all
    reward_model_weight: float = 1.0  # weight of the shared-base reward model's normalised score, if attached
    checkpoint_every: int = 10  # save a checkpoint every N updates (and at the end)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    progress: bool = True  # rich progress bar on rank 0
    rollout_engine: str = "hf"  # hf (transformers generate, KV cache) | vllm (LoRA hot-loading, if installed)

    def __post_init__(self):
        self.rollout_size = self.batch_size * self.samples_per_prompt  # sequences per process per update
        if self.rollout_size % (self.num_minibatches * self.grad_accum):
            raise ValueError(f"batch_size*samples_per_prompt={self.rollout_size} must divide into "
                             f"num_minibatches*grad_accum={self.num_minibatches * self.grad_accum}")
        self.minibatch_size = self.rollout_size // self.num_minibatches
        self.micro_batch_size = self.minibatch_size // self.grad_accum
        self.fused_first_pass = self.ppo_epochs == 1 and self.num_minibatches == 1 and self.grad_accum == 1
        if self.advantage not in ("gae", "rloo"):
            raise ValueError(f"advantage: expected 'gae' or 'rloo', got {self.advantage!r}")
        if self.advantage == "rloo" and self.samples_per_prompt < 2:
            raise ValueError("advantage 'rloo' needs samples_per_prompt >= 2 (the other samples are the baseline)")


@dataclass
class PPOResult:
    adapter_dir: str  # policy LoRA (loads with PeftModel.from_pretrained on the base)
    value_dir: str  # value adapter + score_head.safetensors
    steps: int
    history: list[dict]  # metrics of every update
    reward_start: float  # mean score of the first update
    reward_end: float  # mean score over the last quarter of updates


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss can carry a parent's peak across fork+exec)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mlflow_logger(tracking_uri: str, run_id: str) -> Callable[[dict, int], None]:
    """A logger that writes each update's metrics to an existing MLflow run (imported lazily)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    def log(metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                          for k, v in metrics.items() if isinstance(v, (int, float))])
    return log


class PPOTrainer:
    def __init__(self, config: PPOConfig, base: str | Path, prompts: list[list[dict]], reward_fn: RewardFn,
                 out_dir: str | Path, *, init_adapter: str | Path | None = None,
                 reward_model_dir: str | Path | None = None, logger: Callable[[dict, int], None] | None = None,
                 dtype: str = "float32", device: str = "auto"):
        if not prompts:
            raise ValueError("prompts: empty, PPO needs at least one prompt")
        self.cfg, self.prompts, self.reward_fn, self.logger = config, prompts, reward_fn, logger
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.rank, self.world = _dist()
        torch.manual_seed(config.seed)  # identical LoRA init on every rank
        lm, self.tokenizer = load_base(base, dtype, device)
        self.ac = ActorCritic(lm, r=config.lora_r, alpha=config.lora_alpha, target_modules=config.lora_target_modules,
                              init_adapter=init_adapter, value_layers=config.value_layers)
        if reward_model_dir is not None:
            self.ac.attach_reward_model(reward_model_dir)
        self.model = self.ac
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.ac)
        self.params = [p for p in self.ac.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, eps=1e-5, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
        if config.rollout_engine == "vllm":
            from models.rollout import VLLMRolloutEngine
            self.engine = VLLMRolloutEngine(self.ac, self.tokenizer, str(base), config.max_prompt_len)
        elif config.rollout_engine == "hf":
            self.engine = HFRolloutEngine(self.ac, self.tokenizer, config.max_prompt_len)
        else:
            raise ValueError(f"rollout_engine: expected 'hf' or 'vllm', got {config.rollout_engine!r}")
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
        cfg, ac, t0 = self.cfg, self.ac, time.perf_counter()
        # 1. prompts of this update (this rank's share of the global batch)
        idx = _prompt_indices(self.step, len(self.prompts), cfg.batch_size, self.rank, self.world, cfg.seed)
        prompts = [self.prompts[i] for i in idx for _ in range(cfg.samples_per_prompt)]
        # 2. rollout: sample responses with the policy role (KV cache, left padding)
        rollout = self.engine.generate(prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        input_ids, attention_mask, mask = rollout.input_ids, rollout.attention_mask, rollout.response_mask
        R = mask.shape[1]
        t_gen = time.perf_counter() - t0
        # 3. score: the injected online reward (+ the shared-base reward model), EOS trick
        scores = torch.tensor(self.reward_fn(prompts, rollout.completions), dtype=torch.float32)
        if len(scores) != len(prompts):
            raise ValueError(f"reward_fn returned {len(scores)} scores for {len(prompts)} completions")
        if ac.reward_head is not None:
            scores = scores + cfg.reward_model_weight * ac.reward_scores(input_ids, attention_mask).cpu()
        raw_scores = scores.clone()
        scores = eos_penalty(scores, rollout.has_eos.cpu(), cfg.missing_eos_penalty).to(mask.device)
        # 4. reference log-probs (adapter disabled / warm start only), rollout log-probs and values
        ref_logprobs, trunk = ac.reference_pass(input_ids, attention_mask, R, cfg.temperature)  # (B, R), (B, L, H)|None
        fused = None
        if cfg.fused_first_pass:
            fused = self.model(input_ids, attention_mask, R, cfg.temperature, trunk)  # with grad, reused in phase 6
            old_logprobs, old_values = fused[0].detach(), fused[2].detach()
        else:
            with torch.no_grad():
                old_logprobs, _, old_values = ac(input_ids, attention_mask, R, cfg.temperature, trunk)
        # 5. KL-penalised per-token rewards, GAE, whitened advantages
        kl = kl_per_token(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, R)
        rewards = kl_penalized_rewards(scores, kl, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(old_values, rewards, mask, cfg.gamma, cfg.lam)
        if cfg.advantage == "rloo":  # (B, T): same advantage on every token of a response, scaled to unit std
            advantages = rloo_advantages(scores, kl, mask, self.kl_ctl.value, cfg.samples_per_prompt)
            advantages = masked_whiten(advantages, mask, shift_mean=False)
        else:
            advantages = masked_whiten(advantages, mask)
        # 6. PPO epochs × minibatches × micro-batches
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "v_loss", "entropy", "clipfrac", "vf_clipfrac",
                                                          "approx_kl")}
        n = len(prompts)
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(n) if cfg.num_minibatches > 1 else torch.arange(n)
            for start in range(0, n, cfg.minibatch_size):
                mb = order[start:start + cfg.minibatch_size]
                for k, mstart in enumerate(range(0, len(mb), cfg.micro_batch_size)):
                    b = mb[mstart:mstart + cfg.micro_batch_size]
                    last = mstart + cfg.micro_batch_size >= len(mb)
                    with (nullcontext() if last or self.world == 1 else self.model.no_sync()):
                        if fused is not None:
                            logprobs, entropy, values = fused
                            fused = None
                        else:
                            logprobs, entropy, values = self.model(input_ids[b], attention_mask[b], R, cfg.temperature,
                                                                   None if trunk is None else trunk[b])
                        pg_loss, clipfrac, approx_kl = policy_loss(logprobs, old_logprobs[b], advantages[b], mask[b],
                                                                   cfg.clip_coef)
                        v_loss, vf_clipfrac = value_loss(values, old_values[b], returns[b], mask[b], cfg.vf_clip_coef)
                        ent = masked_mean(entropy, mask[b])
                        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
                        (loss / cfg.grad_accum).backward()
                    for key, v in zip(stats, (pg_loss, v_loss, ent, clipfrac, vf_clipfrac, approx_kl)):
                        stats[key].append(float(v.detach()))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if cfg.early_stop_kl is not None and stats["approx_kl"][-1] > cfg.early_stop_kl:
                break
        # 7. KL controller and learning-rate schedule
        mean_kl = float(kl.sum(1).mean())
        self.kl_ctl.update(mean_kl, n * self.world)
        self.scheduler.step()
        self.step += 1
        # 8. metrics (averaged over ranks)
        dt = time.perf_counter() - t0
        metrics = {
            "objective/scores": float(raw_scores.mean()), "objective/scores_std": float(raw_scores.std()),
            "objective/kl": mean_kl, "objective/non_score_reward": float((-self.kl_ctl.value * kl).sum(1).mean()),
            "objective/kl_coef": self.kl_ctl.value, "policy/entropy": float(np.mean(stats["entropy"])),
            "losses/policy_loss": float(np.mean(stats["pg_loss"])), "losses/value_loss": float(np.mean(stats["v_loss"])),
            "policy/clipfrac": float(np.mean(stats["clipfrac"])), "policy/approx_kl": float(np.mean(stats["approx_kl"])),
            "val/clipfrac": float(np.mean(stats["vf_clipfrac"])), "grad_norm": float(grad_norm),
            "val/explained_variance": float(explained_variance(old_values, returns, mask)),
            "charts/response_length": float(mask.sum(1).mean()), "charts/eos_fraction": float(rollout.has_eos.float().mean()),
            "charts/lr": self.scheduler.get_last_lr()[0], "charts/tokens_per_s": float(mask.sum()) * self.world / dt,
            "charts/step_time_s": dt, "charts/generate_time_s": t_gen, "charts/peak_rss_mb": _peak_rss_mb(),
        }
        if self.world > 1:
            vec = torch.tensor(list(metrics.values()), dtype=torch.float64)
            dist.all_reduce(vec)
            metrics = dict(zip(metrics, (vec / self.world).tolist()))
        metrics["step"] = self.step
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        path = self.ckpt_dir / f"step-{self.step:06d}"
        tmp = path.with_suffix(".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save({"step": self.step, "policy": self.ac.adapter_state("policy"),
                        "value": self.ac.adapter_state("value"), "value_head": self.ac.value_head.state_dict(),
                        "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "kl_ctl": self.kl_ctl.state_dict(), "history": self.history, "config": asdict(self.cfg)},
                       tmp / "state.pt")
        if self.world > 1:
            dist.barrier()
        torch.save(_rng_state(), tmp / f"rng-rank{self.rank}.pt")
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            tmp.rename(path)  # atomic: a kill mid-write leaves only a .tmp folder, ignored on resume
            for old in sorted(self.ckpt_dir.glob("step-??????"))[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        if self.world > 1:
            dist.barrier()

    def load_checkpoint(self) -> bool:
        done = sorted(self.ckpt_dir.glob("step-??????")) if self.ckpt_dir.is_dir() else []
        if not done:
            return False
        state = torch.load(done[-1] / "state.pt", weights_only=False)
        self.ac.load_adapter_state("policy", state["policy"])
        self.ac.load_adapter_state("value", state["value"])
        self.ac.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.step, self.history = state["step"], state["history"]
        _set_rng_state(torch.load(done[-1] / f"rng-rank{self.rank}.pt", weights_only=False))
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
        with bar:
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
        if self.rank == 0:
            self.ac.save_policy(self.out / "adapter", max_rank=self.cfg.max_adapter_rank)
            self.ac.save_value(self.out / "value")
        scores = [m["objective/scores"] for m in self.history]
        tail = scores[-max(1, len(scores) // 4):]
        return PPOResult(str(self.out / "adapter"), str(self.out / "value"), self.step, self.history,
                         scores[0] if scores else float("nan"), float(np.mean(tail)) if tail else float("nan"))


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
              out_dir: str | Path, *, init_adapter: str | Path | None = None, reward_model_dir: str | Path | None = None,
              logger: Callable[[dict, int], None] | None = None, resume: bool = True, dtype: str = "float32",
              device: str = "auto", on_step_end: Callable[[int, dict], None] | None = None) -> PPOResult:
    """Train a LoRA policy with PPO on ``prompts`` scored by ``reward_fn``; writes ``out_dir/adapter`` and returns
    a :class:`PPOResult`. Resumes from ``out_dir/checkpoints`` when one exists (``resume=True``)."""
    trainer = PPOTrainer(config, base, prompts, reward_fn, out_dir, init_adapter=init_adapter,
                         reward_model_dir=reward_model_dir, logger=logger, dtype=dtype, device=device)
    return trainer.train(resume=resume, on_step_end=on_step_end)
