"""Config of the judge stage: reward components, the LLM judge endpoint and the reward model."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentConfig(_Strict):
    name: str = Field(..., description="Column name of the component (reward_<name>).")
    kind: Literal["rule", "kpi", "llm_judge", "reward_model"]
    weight: float = Field(1.0, ge=0, description="Weight in the composite reward.")
    params: dict[str, Any] = Field(default_factory=dict, description="Grader-specific parameters.")


class JudgeConfig(_Strict):
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1; None = no judge.")
    model: str = Field("judge", description="Model name sent to the endpoint.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer token; use ${ENV_VAR}.")
    concurrency: int = Field(16, ge=1, description="Max requests in flight.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    on_failure: Literal["fail", "missing"] = Field("missing", description="fail the stage, or mark the component missing.")


class RewardsConfig(_Strict):
    components: list[ComponentConfig] = Field(default_factory=list, description="Reward components; empty = the demo defaults.")
    judge: JudgeConfig = JudgeConfig()
