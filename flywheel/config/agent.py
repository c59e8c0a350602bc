"""The ``agent:`` section: training an agent in a mock environment (``flywheel agent-train``, flows/agent_training.py).

The agent's policy is the project's ``model.base`` (the tiny base is fitted on the production agent transcripts in
``agent.transcripts``) with a LoRA adapter; RL uses the ``train:`` knobs (estimator, learning rate, KL, LoRA) with
the agent's own sizes below. Releases go to the registered model ``<registry.model_name or project.name>-agent``.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    domain: str = Field("acme_shop", description="Built-in environment (acme_shop: customer support over an orders "
                                                 "database, 45 tasks in tau2-bench's format).")
    transcripts: Path | None = Field(None, description="Folder of production agent transcripts (interaction logs, "
                                                       "dt=YYYY-MM-DD/*.jsonl, one row per model call) the tiny "
                                                       "base is fitted on; needed when model.base is 'tiny'.")
    rollout_trials: int = Field(8, ge=1, description="Episodes of the starting policy per train task; those at or "
                                                     "above success_threshold become the synthetic SFT dataset.")
    success_threshold: float = Field(1.0, ge=0, le=1, description="Rejection-sampling cut on the episode reward.")
    sft_epochs: int = Field(3, ge=0, description="SFT epochs on the synthetic dataset (0 = skip SFT).")
    rl_steps: int = Field(30, ge=0, description="RL updates after SFT (0 = skip RL).")
    tasks_per_update: int = Field(8, ge=1, description="Train tasks per RL update.")
    episodes_per_task: int = Field(4, ge=2, description="Episodes per task per update: the RLOO / GRPO group.")
    eval_trials: int = Field(4, ge=1, description="Episodes per held-out test task when evaluating (pass^k up to "
                                                  "this k).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of rollouts and evaluation.")
    max_new_tokens: int = Field(96, ge=1, description="Longest assistant turn, in tokens.")
    max_steps: int = Field(10, ge=1, description="Assistant turns before an episode is cut (truncated).")
    min_gain: float = Field(0.0, ge=0, description="Promote only when the candidate's held-out success rate beats "
                                                   "the champion's by more than this.")
