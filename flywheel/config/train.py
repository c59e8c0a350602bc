"""Config of the learning code: which base model (``model:``) and the PPO knobs (``train:``).

``train:`` is generated from ``models.config.PPOConfig``: one pydantic field per dataclass field (same name, type and
default; the description and bounds come from the field's metadata), plus the pipeline-only fields of
``TrainPipelineFields`` that are not PPO knobs. ``TrainConfig.ppo_kwargs()`` gives back the PPOConfig arguments.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from models.config import PPOConfig, yaml_fields


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyBaseConfig(_Strict):
    """The offline stand-in for a pretrained model (``model.base: tiny``), built once per state dir from the logs."""

    hidden_size: int = Field(192, ge=16, description="Width of the tiny Llama.")
    num_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide by it).")
    intermediate_size: int = Field(512, ge=16, description="MLP width.")
    vocab_size: int = Field(1024, ge=300,
                            description="BPE vocabulary trained on the logs (digits split one per token).")
    max_positions: int = Field(512, ge=64, description="Longest chat in tokens (an agent's multi-turn transcripts "
                                                       "need ~1024).")
    fit_steps: int = Field(400, ge=0,
                           description="Full-weight steps on the logged chats (numbers renumbered each draw), "
                                       "the stand-in for pretraining; ~1.5 CPU-minutes at the defaults. "
                                       "Exact order-id copies appear abruptly, after ~150-250 steps.")
    fit_batch_size: int = Field(32, ge=1, description="Chats per step (batch 8 did not learn to copy in 2,500 steps).")
    fit_learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (>= 2e-3 often never copied).")


class ModelConfig(_Strict):
    base: str = Field("tiny",
                      description="'tiny' (built offline from the logs) or a Hugging Face model id / local path.")
    tiny: TinyBaseConfig = Field(default_factory=TinyBaseConfig, description="How the 'tiny' base is built.")
    dtype: str = Field("float32", description="float32 | bfloat16 | float16.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")


class TrainPipelineFields(_Strict):
    """The ``train:`` keys that are not PPO knobs: how the train stage feeds PPOConfig."""

    max_prompts: int | None = Field(2000, ge=1, description="Distinct prompts taken from the scored snapshot "
                                                            "(newest first); None = all.")

    @model_validator(mode="after")
    def _ppo_config_accepts_it(self):
        """The cross-field checks of PPOConfig (batch divisibility, group size of rloo/grpo) at load time."""
        if type(self) is not TrainPipelineFields:
            PPOConfig(**self.ppo_kwargs())  # its ValueError names the knob
        return self

    def ppo_kwargs(self) -> dict[str, Any]:
        """The PPOConfig keyword arguments of this section (every field but the pipeline-only ones)."""
        return {k: v for k, v in self.model_dump().items() if k not in TrainPipelineFields.model_fields}


def _ppo_field(f: dataclasses.Field, annotation: Any) -> tuple[Any, Any]:
    """(annotation, pydantic Field) of one PPOConfig field: default, doc and bounds from its metadata."""
    meta = dict(f.metadata)
    doc = meta.pop("doc")
    if f.default_factory is not dataclasses.MISSING:
        return annotation, Field(default_factory=f.default_factory, description=doc, **meta)
    return annotation, Field(f.default, description=doc, **meta)


_HINTS = typing.get_type_hints(PPOConfig)
TrainConfig = create_model(
    "TrainConfig", __base__=TrainPipelineFields, __module__=__name__,
    __doc__="PPO knobs (generated from models.config.PPOConfig) + the pipeline-only fields.",
    **{f.name: _ppo_field(f, _HINTS[f.name]) for f in yaml_fields()},
)
