"""The nightly flow: observe -> validate -> score -> train -> evaluate -> promote -> deploy.

Each stage is a Prefect task of ``tasks/`` passing the typed records of ``flywheel/records.py`` (URIs, counts,
hashes, ids, each naming its upstream record). ``flows/_stage.py``
gives every call its night-stamped run name, persisted result, input-derived cache key (a rerun of the same night
skips finished stages) and a failure message naming the stage. Every run publishes a Markdown summary and a gate
table as Prefect artifacts, and returns a ``NightRecord``; the summary also lists the canary decisions taken since
the previous night (``flywheel/gateway/decisions.py``: the gateway's monitor, ``flywheel canary``, registry tags).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from flows._stage import (
    Night,
    StageFailed,
    committed_observation,
    digest,
    load_flow_config,
    night_of,
    remember_observation,
    run_glue,
    run_stage,
)
from flows.ingest import observe_night
from flywheel.config import FlywheelConfig
from flywheel.gateway.decisions import CanarySummary, canary_summary, summary_lines, table_rows
from flywheel.nightlock import night_lock
from flywheel.records import Candidate, Deployment, Evaluation, Release
from tasks.deploy import deploy_champion
from tasks.evaluate import evaluate_candidate
from tasks.observe import commit_observed
from tasks.promote import promote_candidate
from tasks.score import score_snapshot
from tasks.train import train_candidate
from tasks.validate import validate_snapshot

__all__ = ["NightRecord", "StageFailed", "continuous_improvement", "night_of"]


class NightRecord(BaseModel):
    """What one night did, in numbers (the demo's report rows come from here)."""

    day: str
    status: str = Field(description="completed | skipped (no new rows)")
    rows_in: int = 0
    rows_clean: int = 0
    rows_quarantined: int = 0
    feedback_joined: int = 0  # tonight's rows whose feedback came from the delayed-feedback table (the gateway's)
    snapshot_hash: str | None = None
    champion_reward: float | None = None
    candidate_reward: float | None = None
    candidate_ci: list[float | None] | None = None
    gain: float | None = None
    gain_ci: list[float | None] | None = None
    promoted: bool = False
    decision: str = ""
    reason: str = ""
    gates: list[dict] = Field(default_factory=list)
    components: dict[str, Any] = Field(default_factory=dict)
    champion_version: str | None = None
    candidate_version: str | None = None
    candidate_uri: str | None = None
    base_model: str | None = None
    reward_curve: list[float] = Field(default_factory=list)
    train_run_id: str | None = None
    eval_run_id: str | None = None
    eval_report_html: str | None = None
    deploy: dict[str, Any] = Field(default_factory=dict)
    canary: dict[str, Any] = Field(default_factory=dict, description="canary decisions since the previous night "
                                   "(a CanarySummary)")
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    stage_run_seconds: dict[str, float] = Field(default_factory=dict)
    cached: dict[str, bool] = Field(default_factory=dict)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return f"nightly-{params.get('day') or dt.date.today().isoformat()}"


@flow(name="continuous-improvement", flow_run_name=_run_name, log_prints=True, persist_result=False)
def continuous_improvement(config_path: str | None = None, day: str | None = None,
                           overrides: dict[str, Any] | None = None, refresh: bool = False) -> NightRecord:
    """One night of the flywheel. ``day`` names the night (default: today in ``schedule.timezone``); ``refresh``
    recomputes every stage instead of reusing the results a previous run of the same night persisted. A second run of
    the same night fails with ``NightBusy``; runs of different nights on one state dir run one at a time."""
    log = get_run_logger()
    cfg = load_flow_config(config_path, overrides)
    night = Night(day=night_of(day, cfg.schedule.timezone), state=cfg.state, config_digest=digest(cfg), refresh=refresh)
    with night_lock(cfg.state, night.day, log=log.info):  # NightBusy: this night runs elsewhere (flywheel/nightlock.py)
        return run_night(night, cfg)


def run_night(night: Night, cfg: FlywheelConfig) -> NightRecord:
    """The stages of one night, under its lock."""
    log = get_run_logger()
    night.ensure_storage()
    observation = observe_night(night, cfg)  # in parts: spread over workers by a Dask/Ray task runner
    observation = committed_observation(night, observation, log=log.warning)  # a rerun after commit: flows/_stage.py
    if not observation.new_data:
        record = NightRecord(day=night.day, status="skipped", reason=f"no new logs: {observation.message}")
        log.info(record.reason)
        return _finish(night, record, cfg)
    clean = run_stage(night, "validate", validate_snapshot, observation, cfg.validation, str(cfg.state))
    run_glue("commit", remember_observation, night, observation)
    run_stage(night, "commit", commit_observed, observation, str(cfg.state))
    record = NightRecord(day=night.day, status="completed", rows_in=clean.rows_in, rows_clean=clean.rows_clean,
                         rows_quarantined=clean.rows_quarantined, snapshot_hash=clean.snapshot_hash)
    scores = run_stage(night, "score", score_snapshot, cfg, clean)
    record.feedback_joined = scores.feedback_joined
    candidate = run_stage(night, "train", train_candidate, cfg, scores)
    evaluation = run_stage(night, "evaluate", evaluate_candidate, cfg, candidate, scores)
    release = run_stage(night, "promote", promote_candidate, cfg, candidate, evaluation)
    deployment = run_stage(night, "deploy", deploy_champion, cfg, release)
    record_outcome(record, candidate, evaluation, release, deployment)
    return _finish(night, record, cfg)


def record_outcome(record: NightRecord, candidate: Candidate, evaluation: Evaluation, release: Release,
                   deployment: Deployment) -> None:
    """Copy the numbers of the stage records (and the evaluation report) into the night's record."""
    import json

    s = evaluation.summary
    record.candidate_uri = candidate.adapter_uri
    record.base_model = candidate.base_model
    record.reward_curve = reward_curve(candidate.metrics_uri)
    record.train_run_id = candidate.run_id
    record.eval_run_id, record.eval_report_html = evaluation.run_id, evaluation.report_html
    record.gain, record.gain_ci = s.get("gain"), s.get("gain_ci")
    report = json.loads(Path(evaluation.report_json).read_text())
    report = report.get("report", report)  # {"report": EvalReport, "decision": Decision}
    roles, reference = report["roles"], report.get("reference", "champion")
    cand_total = roles["candidate"]["components"].get("total") or {}
    ref_total = (roles.get(reference) or {}).get("components", {}).get("total") or {}
    record.candidate_reward = cand_total.get("mean", s.get("total"))
    record.candidate_ci = [cand_total.get("lo"), cand_total.get("hi")]
    record.champion_reward = ref_total.get("mean")
    record.components = {
        comp: {role: {"mean": est.get("mean"), "ci": [est.get("lo"), est.get("hi")]}
               for role, est in (("candidate", roles["candidate"]["components"].get(comp) or {}),
                                 ("champion", (roles.get(reference) or {}).get("components", {}).get(comp) or {}))}
        for comp in roles["candidate"]["components"]}
    record.gates = [g.model_dump() for g in evaluation.decision.gates]
    record.promoted = release.decision == "promoted"
    record.decision, record.reason = release.decision, release.reason
    record.champion_version = None if release.champion_version is None else str(release.champion_version)
    record.candidate_version = None if release.version is None else str(release.version)
    record.deploy = deployment.model_dump(mode="json")


def reward_curve(metrics_uri: str | None) -> list[float]:
    """Mean online reward of each PPO update, from the trainer's metrics.jsonl."""
    import json

    if not metrics_uri or not Path(metrics_uri).is_file():
        return []
    rows = [json.loads(line) for line in Path(metrics_uri).read_text().splitlines() if line.strip()]
    return [round(float(r["objective/scores"]), 4) for r in rows if "objective/scores" in r]


def _finish(night: Night, record: NightRecord, cfg: FlywheelConfig) -> NightRecord:
    record.canary = run_glue("canary", canary_summary, cfg, night.day).model_dump(mode="json")
    record.stage_seconds, record.cached = dict(night.seconds), dict(night.cached)
    record.stage_run_seconds = dict(night.run_seconds)
    publish_artifacts(record)
    return record


def fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def summary_markdown(record: NightRecord) -> str:
    """The night's Markdown summary: rows, rewards, decision, links, timings, then the canary decisions."""
    ci = record.candidate_ci or [None, None]
    lines = [
        f"# Night {record.day}: {record.status}",
        "",
        "| rows in | clean | quarantined | champion reward | candidate reward (95 % CI) | gain (95 % CI) | decision | "
        "champion |",
        "|---|---|---|---|---|---|---|---|",
        f"| {record.rows_in} | {record.rows_clean} | {record.rows_quarantined} | {fmt(record.champion_reward)} | "
        f"{fmt(record.candidate_reward)} [{fmt(ci[0])}, {fmt(ci[1])}] | {fmt(record.gain)} "
        f"[{fmt((record.gain_ci or [None, None])[0])}, {fmt((record.gain_ci or [None, None])[1])}] | "
        f"{record.decision or record.status} | v{record.champion_version or '-'} |",
        "",
        f"**Reason:** {record.reason or '-'}",
        "",
        f"- MLflow training run: `{record.train_run_id or '-'}`; evaluation run: `{record.eval_run_id or '-'}`",
        f"- Evaluation report: `{record.eval_report_html or '-'}`",
        f"- Deploy: {record.deploy.get('status', '-') if record.deploy else '-'}",
        f"- Stage seconds: {', '.join(f'{k} {v:.1f}' for k, v in record.stage_seconds.items())}",
        f"- Reused from an earlier run of this night: {', '.join(k for k, v in record.cached.items() if v) or 'none'}",
    ]
    if record.canary:
        lines += ["", *summary_lines(CanarySummary.model_validate(record.canary))]
    return "\n".join(lines)


def publish_artifacts(record: NightRecord) -> None:
    """Markdown summary + gate table (+ stage timings, canary decisions) as Prefect artifacts of this flow run."""
    create_markdown_artifact(key="nightly-summary", markdown=summary_markdown(record),
                             description=f"night {record.day}")
    if record.gates:
        create_table_artifact(key="nightly-gates", table=[
            {"gate": g.get("name"), "value": g.get("value"), "threshold": g.get("threshold"),
             "passed": g.get("passed"), "reason": g.get("reason")} for g in record.gates],
            description=f"gate decisions, night {record.day}")
    if record.canary.get("entries"):
        create_table_artifact(key="nightly-canary", table=table_rows(CanarySummary.model_validate(record.canary)),
                              description=f"canary decisions since the previous night, night {record.day}")
    create_table_artifact(key="nightly-stages", table=[
        {"stage": k, "seconds": v, "cached": record.cached.get(k, False)} for k, v in record.stage_seconds.items()],
        description=f"stage timings, night {record.day}")
