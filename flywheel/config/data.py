"""Config of the data plane: where logs come from (observe) and the contract they must meet (validate)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_contracts.limits import Limits

_CONTRACT_LIMITS = Limits()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Config(_Strict):
    endpoint_url: str | None = Field(None, description="Custom S3 endpoint (MinIO, moto); None = AWS.")
    region: str | None = Field(None, description="AWS region; None = the credential chain's default.")
    profile: str | None = Field(None, description="AWS profile name; None = the standard credential chain.")


class SourceConfig(_Strict):
    uri: str = Field("demo_logs", description="Local folder or s3://bucket/prefix holding dt=YYYY-MM-DD/ partitions.")
    s3: S3Config = S3Config()
    max_workers: int = Field(8, ge=1, le=128, description="Parallel object downloads (threads).")
    parse_workers: int = Field(1, ge=1, le=64, description="Processes that download and parse objects in parallel "
                               "when a batch is big (see parallel_min_bytes); 1 = parse in the main process.")
    parallel_min_bytes: int = Field(64 << 20, ge=0, description="Batches smaller than this (bytes listed) are "
                                    "parsed in the main process: starting worker processes costs about a second.")
    part_bytes: int = Field(512 << 20, ge=1, description="The flows read a night's new objects in parts of "
                            "about this many bytes (listed sizes), one Prefect task each: with a Dask or Ray task "
                            "runner the parts are read on different workers (the state dir must be shared); with "
                            "the default runner one after the other. `flywheel ingest` reads one part.")
    retries: int = Field(5, ge=0, le=20, description="Retries of each S3 request on a transient error (5xx, "
                         "throttling, connection reset, timeout, truncated body), with exponential backoff.")
    retry_base_seconds: float = Field(0.2, gt=0, le=60, description="Backoff before the first retry; doubled "
                                      "each retry (jittered, at most 10 s).")
    list_page_size: int = Field(1000, ge=1, le=1000, description="Keys per S3 ListObjectsV2 page.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a local folder or s3://bucket/prefix")
        if v.startswith("s3://") and len(v[5:].split("/", 1)[0]) < 3:
            raise ValueError("s3 bucket name must have at least 3 characters")
        return v


class GatesConfig(_Strict):
    min_rows: int = Field(1, ge=0, description="A batch with fewer rows in stops the flow.")
    max_quarantine_fraction: float = Field(0.2, ge=0, le=1, description="Max share of rows quarantined.")
    max_null_rate: float = Field(0.05, ge=0, le=1, description="Max share of rows missing a key field.")
    max_duplicate_rate: float = Field(0.05, ge=0, le=1, description="Max share of duplicate request_id rows.")


class LimitsConfig(_Strict):
    """The contract's bounds on one interaction (defaults: ``data_contracts.limits.Limits``)."""

    max_messages: int = Field(_CONTRACT_LIMITS.max_messages, ge=1, description="Max messages in one interaction.")
    max_message_chars: int = Field(_CONTRACT_LIMITS.max_message_chars, ge=1,
                                   description="Max characters of one message's content.")
    max_completion_chars: int = Field(_CONTRACT_LIMITS.max_completion_chars, ge=1,
                                      description="Max characters of the completion.")
    max_future_seconds: int = Field(_CONTRACT_LIMITS.max_future_seconds, ge=0,
                                    description="Timestamps later than now + this are rejected.")

    def contract_limits(self) -> Limits:
        """These bounds as the contract's ``Limits``."""
        return Limits(**self.model_dump())


class PiiConfig(_Strict):
    enabled: bool = Field(True, description="Scrub emails, phone numbers and card numbers from clean rows.")
    extra_patterns: dict[str, str] = Field(default_factory=dict, description="name -> regex, scrubbed as [NAME].")


class ValidateConfig(_Strict):
    contract: str = Field("interaction_log_v1", description="Module in data_contracts/ exposing build_suite().")
    gates: GatesConfig = GatesConfig()
    limits: LimitsConfig = LimitsConfig()
    pii: PiiConfig = PiiConfig()
