"""Config of evaluate, promote (registry), serve and the nightly schedule."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EvaluateConfig(_Strict):
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the newest day held out for evaluation.")
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples for 95 % CIs.")
    min_gain_ci_low: float = Field(0.0, description="Gate: the CI lower bound of the total-reward gain must exceed this.")
    max_kl: float = Field(10.0, gt=0, description="Gate: KL to the base must not exceed this.")


class RegistryConfig(_Strict):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; None = sqlite under state_dir.")


class ServeConfig(_Strict):
    host: str = Field("127.0.0.1", description="Bind address of the vLLM server.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the vLLM server.")


class ScheduleConfig(_Strict):
    cron: str = Field("0 2 * * *", description="Nightly schedule.")
    timezone: str = Field("UTC", description="IANA timezone of the cron.")
