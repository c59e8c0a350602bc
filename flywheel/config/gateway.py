"""Config of the capture gateway (``flywheel gateway``): upstream, capture, champion/challenger routing, monitor."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# Headers never copied into a row, whatever ``capture.metadata_headers`` says: credentials and session secrets.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                            "api-key", "openai-api-key", "x-auth-token"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CaptureConfig(_Strict):
    """Where captured rows go: a write-ahead log on local disk, then batched ``.jsonl.gz`` objects in the sink."""

    sink: str | None = Field(None, description="Local folder or s3://bucket/prefix the rows are written to "
                                               "(dt=YYYY-MM-DD/ partitions); None = source.uri, so the nightly "
                                               "observe reads them unchanged.")
    wal_dir: Path | None = Field(None, description="Write-ahead log folder on local disk; None = "
                                                   "<state_dir>/gateway/wal.")
    max_rows: int = Field(5000, ge=1, description="A WAL segment is closed (and becomes one object per day) after "
                                                  "this many rows ...")
    max_bytes: int = Field(16 << 20, ge=1024, description="... or this many bytes ...")
    max_seconds: float = Field(60.0, gt=0, description="... or this many seconds after its first row.")
    fsync: bool = Field(False, description="fsync the WAL after every row (survives a machine crash, not only a "
                                           "killed process; costs ~ms per request on most disks).")
    metadata_headers: list[str] = Field(["x-user-id", "x-session-id", "x-channel", "x-app-version"],
                                        description="Request headers copied into the row's metadata (lower-cased "
                                                    "name without 'x-'); credentials and cookies never are.")
    scrub_pii: bool = Field(False, description="Scrub emails, phone and card numbers (validate.pii patterns) from "
                                               "messages and completion at capture.")
    logprobs: bool = Field(False, description="Also capture the sampled tokens (vLLM: as token ids) and their "
                                              "log-probs in metadata.logprobs, for off-policy corrections; asked "
                                              "of the upstream, and removed from non-streaming answers to clients "
                                              "that did not ask for them.")
    task: str | None = Field(None, description="The row's `task`; None = project.name. A request may name its own "
                                               "with the x-flywheel-task header.")

    @field_validator("metadata_headers")
    @classmethod
    def _no_secrets(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if h.lower() in SECRET_HEADERS]
        if bad:
            raise ValueError(f"credentials are never captured: remove {bad}")
        return [h.lower() for h in v]


class RoutingConfig(_Strict):
    """Champion / challenger traffic: a sticky share by a hash of the user or session key, or shadow answers."""

    mode: Literal["off", "canary", "shadow"] = Field("off", description="off = champion only; canary = "
                                                     "challenger_share of the keys are answered by the challenger; "
                                                     "shadow = the champion answers, the challenger's answer to the "
                                                     "same request is logged (never shown).")
    challenger_share: float = Field(0.0, ge=0, le=1, description="Share of routing keys sent to the challenger "
                                                                 "(canary) or shadowed (shadow).")
    key_headers: list[str] = Field(["x-user-id", "x-session-id"], description="Headers tried in order for the "
                                   "sticky routing key; without any, the request id (not sticky).")
    salt: str = Field("flywheel", description="Salt of the routing hash (change it to reshuffle who is in the "
                                              "canary).")
    champion_model: str = Field("champion", description="Upstream model (vLLM adapter name) of the champion.")
    challenger_model: str = Field("challenger", description="Upstream model (vLLM adapter name) of the "
                                                            "challenger.")
    registry_refresh_s: float = Field(30.0, gt=0, description="How often the gateway re-reads the aliases' "
                                                              "versions from the registry (off the request path).")


class MonitorConfig(_Strict):
    """Live champion vs challenger comparison: an always-valid sequential test and guardrails."""

    kpi: str = Field("resolved", description="Bernoulli KPI compared (a feedback field: resolved, thumbs > 0, or "
                                             "escalated/edited, where true is bad).")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Type-I error of the mixture SPRT, valid at every look.")
    mixture_sd: float = Field(0.1, gt=0, description="Prior sd of the mSPRT mixture over the KPI difference (the "
                                                     "effect size the test is most sensitive to).")
    min_samples: int = Field(100, ge=1, description="Labelled requests per arm before any decision.")
    horizon_samples: int = Field(5000, ge=1, description="Labelled requests per arm after which a challenger that "
                                                         "is neither better nor worse is decided by on_horizon.")
    on_horizon: Literal["keep", "promote", "rollback"] = Field("rollback", description="What a tie becomes at the "
                                                               "horizon (keep = stay canary, flagged).")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Guardrail: the challenger's upstream error rate "
                                                                "above this rolls it back.")
    max_latency_p95_ratio: float = Field(1.5, gt=1, description="Guardrail: challenger latency p95 / champion p95 "
                                                                "above this rolls it back.")
    max_rule_failure_rate: float = Field(0.1, ge=0, le=1, description="Guardrail: share of challenger answers "
                                                                      "failing a rule grader above this rolls it "
                                                                      "back.")
    rules: list[dict[str, Any]] = Field(default_factory=list, description="Rule graders run on every live answer "
                                        "of both arms, as in rewards.components params (e.g. {check: json_valid}); "
                                        "an answer scoring < 0.5 on any is a rule failure (max_rule_failure_rate).")
    guardrail_min_requests: int = Field(50, ge=1, description="Requests per arm before guardrails are checked.")
    check_every_s: float = Field(10.0, gt=0, description="How often the gateway looks at the canary (the test "
                                                         "stays valid however often).")
    apply: bool = Field(True, description="Apply decisions to the registry's aliases (False = record only).")


class GatewayConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8100, ge=1, le=65535, description="Port the gateway listens on.")
    upstream_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible upstream (the vLLM "
                                                                      "server), with /v1.")
    upstream_api_key: SecretStr = Field(SecretStr(""), description="Bearer key sent upstream; empty = forward the "
                                                                   "client's Authorization header (never logged).")
    upstream_timeout_s: float = Field(120.0, gt=0, description="Timeout of one upstream call.")
    max_connections: int = Field(256, ge=1, description="Connection pool size to the upstream.")
    capture: CaptureConfig = CaptureConfig()
    routing: RoutingConfig = RoutingConfig()
    monitor: MonitorConfig = MonitorConfig()

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL ending in /v1")
        return v.rstrip("/")
