"""Config of the learning code: which base model, LoRA, PPO and SFT settings.

``train`` fields map one to one onto ``models.trainer.PPOConfig`` (same names, same defaults); see that dataclass
for the maths behind each knob.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyBaseConfig(_Strict):
    """The offline stand-in for a pretrained model (``model.base: tiny``), built once per state dir from the logs."""

    hidden_size: int = Field(192, ge=16, description="Width of the tiny Llama.")
    num_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide by it).")
    intermediate_size: int = Field(512, ge=16, description="MLP width.")
    vocab_size: int = Field(1024, ge=300, description="BPE vocabulary trained on the logs (digits split one per token).")
    fit_steps: int = Field(400, ge=0, description="Full-weight steps on the logged chats (numbers renumbered each draw), "
                                                  "the stand-in for pretraining; ~1.5 CPU-minutes at the defaults. "
                                                  "Exact order-id copies appear abruptly, after ~150-250 steps.")
    fit_batch_size: int = Field(32, ge=1, description="Chats per step (batch 8 did not learn to copy in 2,500 steps).")
    fit_learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (>= 2e-3 often never copied).")


class ModelConfig(_Strict):
    base: str = Field("tiny", description="'tiny' (built offline from the logs) or a Hugging Face model id / local path.")
    tiny: TinyBaseConfig = Field(default_factory=TinyBaseConfig, description="How the 'tiny' base is built.")
    dtype: str = Field("float32", description="float32 | bfloat16 | float16.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    lora_r: int = Field(8, ge=1, description="LoRA rank of the PPO policy and value adapters.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                           description="Modules wrapped by LoRA (names as in the base model).")


class TrainConfig(_Strict):
    seed: int = Field(0, description="Seed for LoRA init, data order and sampling.")
    steps: int = Field(40, ge=1, description="PPO updates per nightly run (each = one rollout batch).")
    batch_size: int = Field(16, ge=1, description="Prompts per rollout batch (per process under accelerate).")
    samples_per_prompt: int = Field(2, ge=1, description="Responses sampled per prompt.")
    max_prompts: int | None = Field(2000, ge=1, description="Distinct prompts taken from the scored snapshot (newest first); None = all.")
    max_new_tokens: int = Field(32, ge=1, description="Response length cap; a response cut before EOS gets missing_eos_penalty.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use the same scaling).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW learning rate of the LoRA adapters and value head.")
    lr_schedule: Literal["constant", "linear"] = Field("constant", description="constant, or linear decay to 0.")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch.")
    num_minibatches: int = Field(2, ge=1, description="Optimizer steps per PPO epoch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per minibatch (gradient accumulation).")
    max_grad_norm: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip epsilon.")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Entropy bonus.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    init_kl_coef: float = Field(0.05, ge=0, description="Initial beta of the per-token KL penalty against the champion.")
    target_kl: float | None = Field(None, gt=0, description="Adaptive KL target per response (None = fixed beta).")
    kl_estimator: Literal["k1", "k3"] = Field("k1", description="Per-token KL estimator in the reward.")
    early_stop_kl: float | None = Field(None, gt=0, description="Stop a batch's PPO epochs once approx-KL exceeds this.")
    whiten_rewards: bool = Field(False, description="Whiten the shaped rewards (mean kept).")
    advantage: Literal["gae", "rloo"] = Field("gae", description="gae: value head + per-token GAE; rloo: each sample's return minus the mean of the other samples of its prompt (needs samples_per_prompt >= 2; the value head is not used).")
    missing_eos_penalty: float | None = Field(-1.0, description="Score of a response without EOS (the EOS trick); None = off.")
    value_layers: int | None = Field(None, ge=1, description="Value adapter only on the top N layers (cheaper backward); None = all.")
    checkpoint_every: int = Field(10, ge=1, description="Checkpoint every N updates; a rerun resumes from the last one.")
    max_adapter_rank: int | None = Field(16, ge=1, description="Rank cap of the saved candidate (champion + PPO delta, SVD re-factored: exact while the update fits, else best approximation); keeps nightly champions within serve.max_lora_rank. None = ranks add up.")
    rollout_engine: Literal["hf", "vllm"] = Field("hf", description="hf (transformers generate) or vllm (if installed).")
