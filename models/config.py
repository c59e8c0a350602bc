"""``PPOConfig``: the one declaration of the training knobs (stdlib only, so configs load without torch).

Every field carries its default, a one-line doc and, where useful, validation bounds in ``field.metadata``
(``{"doc": ..., "ge": 1}``): the YAML ``train:`` section is generated from these fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

ADVANTAGES = ("gae", "rloo", "grpo")
RUNTIME_ONLY = frozenset({"progress"})  # knobs of a call, not of a recipe: never in the YAML `train:` section


def knob(default: Any, doc: str, **bounds: float) -> Any:
    """A PPOConfig field: ``default``, its one-line ``doc`` and optional pydantic bounds (``ge``, ``gt``, ``le``)."""
    meta = {"doc": doc, **bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_learning_rate(hidden_size: int) -> float:
    """The LoRA learning rate for a base of width ``hidden_size``: ``0.2 / hidden_size`` (two significant digits).

    The rule: the best LoRA learning rate is about 10× the full fine-tuning one and, like it, falls roughly as
    1 / width (Schulman et al., "LoRA Without Regret", 2025). The constant is anchored on the tiny demo model, where
    1e-3 at width 192 was measured to lift gold accuracy while keeping order-id copying intact (3e-3 with four PPO
    epochs broke copying within 8 updates). It assumes ``lora_alpha / lora_r`` ≈ 2 (the defaults 16 / 8).

    >>> [default_learning_rate(h) for h in (192, 896, 1536, 4096)]  # tiny demo, Qwen2.5-0.5B, -1.5B, a 7B
    [0.001, 0.00022, 0.00013, 4.9e-05]
    """
    if hidden_size < 1:
        raise ValueError(f"hidden_size: must be >= 1, got {hidden_size}")
    return float(f"{0.2 / hidden_size:.2g}")


@dataclass
class PPOConfig:
    """Every knob of a PPO run on a LoRA policy; the defaults learn on the tiny demo model (2 CPU cores).

    The default recipe is RLOO: 16 prompts × 4 samples per update at temperature 0.7, one PPO epoch of one minibatch.
    With one epoch and one minibatch the rollout policy is the policy being updated, so the ratio is exactly 1, no
    clipping happens, and the update is REINFORCE with a leave-one-out baseline (``rloo``) or a group-normalised one
    (``grpo``); more epochs or minibatches turn it into PPO-clip. ``gae`` trains a value adapter and head as the
    critic; its knobs (``gamma``, ``lam``, ``vf_coef``, ``vf_clip_coef``, ``value_layers``, ``whiten_rewards``) are
    unused by the critic-free estimators.

    ``learning_rate=None`` resolves, once the base is loaded, to ``default_learning_rate(hidden_size)`` (~1e-3 on the
    width-192 demo model, ~5e-5 on a 4096-wide 7B); the trainer's ``cfg`` holds the resolved value.
    """

    seed: int = knob(0, "Seed for LoRA init, data order and sampling (rank r samples with seed + r).")
    steps: int = knob(40, "PPO updates; each = one rollout batch.", ge=1)
    batch_size: int = knob(16, "Prompts per rollout batch, per process (under accelerate/torchrun).", ge=1)
    samples_per_prompt: int = knob(4, "Responses sampled for each prompt (the group of rloo/grpo).", ge=1)
    max_new_tokens: int = knob(32, "Response length cap; a response cut before EOS gets missing_eos_penalty.", ge=1)
    max_prompt_len: int = knob(256, "Prompts are left-truncated to this many tokens.", ge=1)
    temperature: float = knob(0.7, "Sampling temperature; log-probs use the same scaling.", gt=0)
    top_p: float = knob(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    min_p: float = knob(0.0, "Min-p sampling: drop tokens below min_p x the top token's probability (0 = off); "
                             "lets a higher temperature explore where the policy hesitates without sampling "
                             "errors where it is sure (copied ids).", ge=0, lt=1)
    ppo_epochs: int = knob(1, "Passes over each rollout batch (1 with one minibatch = REINFORCE with a baseline).",
                           ge=1)
    num_minibatches: int = knob(1, "Optimizer steps per PPO epoch.", ge=1)
    grad_accum: int = knob(1, "Micro-batches per minibatch (gradient accumulation).", ge=1)
    gradient_checkpointing: bool = knob(False, "Recompute each decoder layer's activations in the backward pass "
                                               "instead of keeping them: activation memory of one layer instead of "
                                               "all, for one more policy forward per optimizer step.")
    learning_rate: float | None = knob(None, "AdamW learning rate of the LoRA adapters (and value head); "
                                             "None = 0.2 / hidden_size of the base (default_learning_rate).", gt=0)
    lr_schedule: Literal["constant", "linear"] = knob("constant", "constant, or linear decay to 0 at `steps`.")
    warmup_steps: int = knob(0, "Linear learning-rate warm-up updates.", ge=0)
    max_grad_norm: float = knob(1.0, "Global gradient-norm clip.", gt=0)
    clip_coef: float = knob(0.2, "PPO ratio clip epsilon.", gt=0)
    vf_clip_coef: float = knob(0.2, "gae: value clip around the rollout values.", gt=0)
    vf_coef: float = knob(0.5, "gae: weight of the value loss.", ge=0)
    ent_coef: float = knob(0.0, "Entropy bonus.", ge=0)
    gamma: float = knob(1.0, "gae: discount.", gt=0, le=1)
    lam: float = knob(0.95, "gae: GAE lambda.", ge=0, le=1)
    init_kl_coef: float = knob(0.05, "Initial beta of the per-token KL penalty against the reference.", ge=0)
    target_kl: float | None = knob(None, "Adaptive beta towards this KL per response (None = fixed beta).", gt=0)
    kl_horizon: int = knob(10000, "Horizon of the adaptive KL controller.", ge=1)
    kl_estimator: Literal["k1", "k3"] = knob("k1", "Per-token KL estimator in the reward.")
    early_stop_kl: float | None = knob(None, "Stop a batch's PPO epochs once approx-KL exceeds this.", gt=0)
    whiten_rewards: bool = knob(False, "gae: whiten the shaped per-token rewards (mean kept).")
    advantage: Literal["gae", "rloo", "grpo"] = knob(
        "rloo", "rloo: each sample's return minus the mean of its prompt's other samples; grpo: the return "
                "normalised by its prompt group's mean and std; gae: a value adapter + head and per-token GAE. "
                "rloo and grpo need samples_per_prompt >= 2 and create no critic.")
    missing_eos_penalty: float | None = knob(-1.0, "Score of a response cut before EOS (the EOS trick); None = off.")
    lora_r: int = knob(8, "LoRA rank of the policy (and value) adapters.", ge=1)
    lora_alpha: int = knob(16, "LoRA alpha (scale = alpha / r).", ge=1)
    lora_target_modules: list[str] = knob(["q_proj", "k_proj", "v_proj", "o_proj"],
                                          "Modules wrapped by LoRA (names as in the base model; ['all-linear'] = all).")
    max_adapter_rank: int | None = knob(16, "Rank cap of the saved candidate (warm start + PPO delta, SVD re-factored: "
                                            "exact while the update fits, else best approximation); None = r1 + r2.",
                                        ge=1)
    value_layers: int | None = knob(None, "gae: value adapter only on the top N layers (shorter backward); None = all.",
                                    ge=1)
    reward_model_weight: float = knob(1.0, "Weight of the shared-base reward model's normalised score, if attached.")
    checkpoint_every: int = knob(10, "Checkpoint every N updates (and at the end); a rerun resumes from the last.",
                                 ge=1)
    keep_checkpoints: int = knob(2, "Checkpoints kept on disk.", ge=1)
    rollout_engine: Literal["hf", "vllm"] = knob("hf", "hf (transformers generate, KV cache) or vllm (a vLLM server "
                                                       "from its own venv; each update's adapter hot-loaded under a "
                                                       "new LoRA name; rollout/logprob_abs_diff = mean |log p vLLM - "
                                                       "log p trainer| per token).")
    vllm_python: str | None = knob(None, "vllm: python of the vLLM venv that runs its server (never imported by the "
                                         "trainer); None = $FLYWHEEL_VLLM_PYTHON, else .venv-vllm/bin/python of "
                                         "the checkout (`make vllm-env`, VLLM_FLAVOR=gpu on a GPU).")
    vllm_gpu_memory_utilization: float = knob(0.3, "vllm on a GPU: share of the GPU's memory the server takes "
                                                   "(weights + KV cache); the trainer uses the rest. Unused on CPU.",
                                              gt=0, le=1)
    vllm_startup_timeout_s: float = knob(600.0, "vllm: seconds the server may take to become healthy (~1 min on "
                                                "2 CPU cores).", gt=0)
    vllm_extra_args: list[str] = knob([], "vllm: more server flags, e.g. ['--enforce-eager'].")
    progress: bool = knob(True, "Rich progress bar on rank 0 (runtime only, not a YAML key).")

    def __post_init__(self):
        self.rollout_size = self.batch_size * self.samples_per_prompt  # sequences per process per update
        if self.rollout_size % (self.num_minibatches * self.grad_accum):
            raise ValueError(f"batch_size*samples_per_prompt={self.rollout_size} must divide into "
                             f"num_minibatches*grad_accum={self.num_minibatches * self.grad_accum}")
        self.minibatch_size = self.rollout_size // self.num_minibatches
        self.micro_batch_size = self.minibatch_size // self.grad_accum
        self.fused_first_pass = self.ppo_epochs == 1 and self.num_minibatches == 1 and self.grad_accum == 1
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage: expected one of {', '.join(ADVANTAGES)}, got {self.advantage!r}")
        if self.advantage != "gae" and self.samples_per_prompt < 2:
            raise ValueError(f"advantage {self.advantage!r} needs samples_per_prompt >= 2 (its baseline is the other "
                             f"samples of the prompt), got {self.samples_per_prompt}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"learning_rate: must be > 0 or None, got {self.learning_rate}")

    @property
    def with_value(self) -> bool:
        """Whether the estimator needs a critic (value adapter + head)."""
        return self.advantage == "gae"


def yaml_fields() -> list:
    """The PPOConfig fields the YAML ``train:`` section exposes (all but ``RUNTIME_ONLY``)."""
    return [f for f in fields(PPOConfig) if f.name not in RUNTIME_ONLY]
