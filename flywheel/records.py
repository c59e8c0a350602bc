"""The records the stages hand each other: small, typed, and each naming the record it came from.

observe → ``Observation`` → validate → ``Validation`` → score → ``Scores`` → train → ``Candidate`` → evaluate →
``Evaluation`` → promote → ``Release`` → deploy → ``Deployment``; the day-0 bootstrap gives a ``WarmStart``.

Large things (snapshots, adapters, reports) live in files whose URI a record carries, never in the record. Each
record embeds the id or hash of its upstream record, and ``Lineage`` gathers what a registry version must say about
where it came from, so the promote stage never re-reads a file or guesses an attribute.
"""
from __future__ import annotations

from pydantic import BaseModel, Field

NONE = "none"  # the value of a lineage tag that does not apply (version 1 has no parent champion)


# ---------------------------------------------------------------------------------------------------- observe
class Observation(BaseModel):
    """What one observe run read: the raw snapshot of the new log objects (manifest committed after validate)."""

    source_uri: str
    new_data: bool
    message: str
    snapshot_uri: str | None = None
    snapshot_hash: str | None = None  # content hash of the raw snapshot: the id every later record carries
    rows: int = 0
    objects_read: int = 0
    objects_quarantined: int = 0
    objects_skipped: int = 0  # already in the manifest (processed before)
    objects_ignored: int = 0  # not under dt=YYYY-MM-DD/ or not a supported suffix
    bytes_read: int = 0
    partitions: list[str] = []
    object_quarantine_uri: str | None = None
    manifest_pending_uri: str | None = None
    seconds: dict[str, float] = {}  # phase -> seconds: list, read (waiting for downloads), parse, write
    parts: int = 0  # the parts the objects were read in (one task each in the flows)
    part_workers: int = 0  # distinct (host, process) that read them: > 1 under a Dask or Ray task runner
    feedback_events: int = 0  # new delayed-feedback events folded into the feedback table (flywheel.feedback)
    feedback_quarantined: int = 0  # feedback lines that were not valid events
    feedback_table_uri: str | None = None


# ---------------------------------------------------------------------------------------------------- validate
class GateResult(BaseModel):
    name: str
    passed: bool
    value: float
    threshold: float
    message: str


class Validation(BaseModel):
    """The contract's verdict on one observed snapshot: clean rows, quarantined rows (with reasons), the report."""

    snapshot_hash: str  # the Observation's id
    contract: str
    rows_in: int
    rows_clean: int
    rows_quarantined: int
    clean_uri: str
    quarantine_uri: str
    report_uri: str
    report_html_uri: str
    checks: dict[str, int]  # reason -> rows failing it
    pii: dict[str, int]  # pattern -> matches scrubbed
    gates: list[GateResult]
    passed: bool
    seconds: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------------- score
class Scores(BaseModel):
    """The clean snapshot scored by every reward component, and the reward spec that scores new answers the same way."""

    snapshot_hash: str  # upstream: the Validation's snapshot
    validation_report_uri: str  # upstream: the Validation's report
    scored_uri: str
    snapshot_uri: str  # the clean snapshot that was scored
    rows: int
    components: list[str]
    spec_uri: str
    spec_hash: str
    means: dict[str, float | None] = Field(default_factory=dict, description="Mean of each component and the total "
                                                                             "(NaN skipped).")
    missing: dict[str, int] = Field(default_factory=dict, description="Rows where a component is missing.")
    policy: str = "reward_model"
    reward_model_uri: str | None = None
    reward_model_version: str | None = None
    reward_model_refreshed: bool = False
    reward_model_metrics: dict[str, float] = Field(default_factory=dict)
    judge_requests: int = 0
    judge_cache_hits: int = 0
    judge_counts: dict[str, int | float] = Field(default_factory=dict, description="The judge's counts "
                                                 "(flywheel.rewards.judge.JudgeStats): requests, cache_hits, retries, "
                                                 "repairs, failures, budget_missing, tokens_in, tokens_out, ...")
    calibration_uri: str | None = None
    feedback_joined: int = 0  # this night's rows whose feedback came from the delayed-feedback table
    feedback_joined_history: int = 0  # earlier nights' rows (the reward model's history) that got delayed feedback
    feedback_unknown: int = 0  # request ids with feedback but no observed interaction (quarantined)
    feedback_quarantine_uri: str | None = None
    feedback_table_hash: str | None = None


# ---------------------------------------------------------------------------------------------------- lineage
class Lineage(BaseModel):
    """Where a model version came from; stored as tags on its registry version (empty values become ``none``)."""

    snapshot_hash: str = NONE
    validation_report: str = NONE
    reward_spec_hash: str = NONE
    base_model: str = NONE
    parent_champion_version: str = NONE
    code_revision: str = NONE
    train_run_id: str = NONE

    def tags(self) -> dict[str, str]:
        return {k: (str(v) if v not in (None, "") else NONE) for k, v in self.model_dump().items()}


def version_tag(version: int | None) -> str:
    """A registry version as a lineage tag value: ``"3"``, or ``none``."""
    return NONE if version is None else str(version)


# ---------------------------------------------------------------------------------------------------- bootstrap
class WarmStart(BaseModel):
    """The day-0 champion: an SFT adapter trained on what production did well."""

    snapshot_hash: str  # upstream: the Validation it was trained from
    validation_report_uri: str
    base_model: str
    adapter_uri: str
    examples: int  # (prompt, completion) pairs production marked good
    rows: int  # clean rows they were chosen from
    losses: list[float]
    run_id: str | None = None

    def lineage(self) -> Lineage:
        return Lineage(snapshot_hash=self.snapshot_hash, validation_report=self.validation_report_uri,
                       base_model=self.base_model, train_run_id=self.run_id or NONE)


# ---------------------------------------------------------------------------------------------------- train
class Candidate(BaseModel):
    """A PPO-trained LoRA candidate, started from the champion (also its KL reference)."""

    scored_uri: str  # upstream: the Scores it trained on
    spec_hash: str
    lineage: Lineage  # snapshot, validation report, reward spec, base, parent champion, train run
    adapter_uri: str  # candidate LoRA folder (PeftModel.from_pretrained on base_model)
    value_uri: str | None  # value adapter + score head; None for critic-free estimators (rloo, grpo)
    base_model: str
    init_adapter: str | None  # the champion the run started from
    champion_version: int | None
    run_id: str | None  # MLflow run with per-step metrics
    steps: int
    reward_start: float  # mean online reward of the first update
    reward_end: float  # mean online reward of the last quarter of updates
    kl_end: float  # KL to the champion at the last update (nats per response)
    seconds: float
    prompts: int
    metrics_uri: str  # metrics.jsonl, one line per update


# ---------------------------------------------------------------------------------------------------- evaluate
class Check(BaseModel):
    """One gate or monitor: its number, threshold, outcome and a sentence saying why."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str


class Decision(BaseModel):
    passed: bool
    gates: list[Check]
    reason: str


class Evaluation(BaseModel):
    """Candidate vs champion (or base): the report's files, the gate decision and its summary numbers."""

    candidate_uri: str  # upstream: the Candidate
    candidate_run_id: str | None = None
    champion_version: int | None
    report_json: str
    report_html: str
    run_id: str | None
    passed: bool
    decision: Decision
    summary: dict


# ---------------------------------------------------------------------------------------------------- promote
class Release(BaseModel):
    """Outcome of a promotion or rollback in the registry."""

    model_name: str
    version: int | None  # the registered (or restored) version
    decision: str  # promoted | canary | rejected | stale | rolled_back
    reason: str
    champion_version: int | None  # champion after the operation
    previous_version: int | None
    source: str | None = None
    run_id: str | None = None
    lineage: Lineage | None = None  # the tags the version carries (None for a rollback)


# ---------------------------------------------------------------------------------------------------- deploy
class SmokeResult(BaseModel):
    passed: bool
    pass_rate: float
    n: int
    answers: list[str]
    latency_ms: list[float]
    error: str | None = None


class Deployment(BaseModel):
    """Outcome of the deploy stage: deployed | rolled_back (the load or the smoke test failed; the previous weights
    answer) | failed (the server stopped answering mid-deploy) | skipped (no server running, or nothing new)."""

    status: str
    endpoint: str
    adapter: str  # versioned adapter name that was tested
    serving: str  # stable name clients use
    version: int | None  # upstream: the Release's version
    smoke: SmokeResult | None = None
    rolled_back_registry: bool = False
    reason: str

    @property
    def deployed(self) -> bool:
        return self.status == "deployed"


# ---------------------------------------------------------------------------------------------------- agents
class AgentEvaluation(BaseModel):
    """How a policy did on a task set."""

    adapter: str | None
    tasks: int
    episodes: int
    success_rate: float  # share of episodes that succeeded
    success_ci: tuple[float, float]  # 95 % Wilson interval, in percent
    mean_reward: float
    pass_hat_k: dict[int, float]  # k -> pass^k
    success_by_task: dict[str, list[bool]]
    end_reasons: dict[str, int]
    episodes_uri: str
