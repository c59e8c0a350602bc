"""Config of the learning code: which base model, LoRA, PPO and SFT settings."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    base: str = Field("tiny", description="'tiny' (built offline from the logs) or a Hugging Face model id / local path.")
    dtype: str = Field("float32", description="float32 | bfloat16 | float16.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], description="Modules wrapped by LoRA.")


class TrainConfig(_Strict):
    seed: int = Field(0, description="Seed for sampling, shuffling and init.")
    steps: int = Field(20, ge=1, description="PPO updates per nightly run.")
    batch_size: int = Field(8, ge=1, description="Prompts per rollout batch.")
    max_new_tokens: int = Field(32, ge=1, description="Response length cap.")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate.")
    init_kl_coef: float = Field(0.05, ge=0, description="Initial KL penalty beta.")
    target_kl: float | None = Field(6.0, description="Adaptive KL target (None = fixed beta).")
    checkpoint_every: int = Field(10, ge=1, description="Checkpoint every N updates.")
