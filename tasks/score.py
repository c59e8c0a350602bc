"""The score stage: clean snapshot → scored Parquet (one ``reward_<name>`` column per component + ``reward_total``).

1. read the clean snapshot; prompts are its ``messages`` (JSON chat), completions its ``completion``; join the
   delayed-feedback table (``flywheel.feedback``) onto it, and quarantine feedback whose request id was never seen;
2. refresh the reward model when enough new feedback labels arrived (else reuse the current one), on the labelled
   rows of the last ``rewards.reward_model.history_days`` of validated snapshots;
3. score every component (rules, KPI, reward model, LLM judge), fit the zscore stats, compute the total;
4. write the scored Parquet and the reward spec (JSON, hashed for lineage), and the calibration report when human
   labels are configured; return a ``Scores`` record naming the validation it scored.

The spec is what ``flywheel.rewards.online.build_online_reward`` turns back into the reward of new answers.
Retried only on transient I/O (the judge endpoint, the disk), never on bad data or config.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config import FlywheelConfig
from flywheel.feedback import join_feedback, known_request_ids, load_feedback_table, quarantine_unknown, table_hash
from flywheel.records import NONE, Scores, Validation
from flywheel.retries import is_transient_io
from flywheel.rewards.composite import ComponentSpec, Composite, spec_hash, specs_to_json, weighted_total
from flywheel.rewards.kpi import binary_label
from flywheel.rewards.spec import build_graders, specs_of
from flywheel.schema import FEEDBACK_FIELDS, REWARD_PREFIX, REWARD_TOTAL


# ---------------------------------------------------------------------------------------------------- the snapshot
def read_snapshot(uri: str | Path):
    import pandas as pd

    path = Path(str(uri).removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"snapshot {uri}: no such file")
    df = pd.read_parquet(path)
    for col in ("messages", "completion"):
        if col not in df.columns:
            raise ValueError(f"snapshot {uri}: missing column {col!r}")
    return df


def prompts_of(df) -> list[list[dict]]:
    return [json.loads(m) if isinstance(m, str) else list(m) for m in df["messages"]]


def context_of(df) -> dict[str, list]:
    """Per-row columns the graders may read: feedback fields, references, anything else in the snapshot."""
    ctx = {c: [None if _isna(v) else v for v in df[c].tolist()]
           for c in df.columns if c not in ("messages", "completion")}
    for f in FEEDBACK_FIELDS:
        ctx.setdefault(f, [None] * len(df))
    return ctx


def _isna(v: Any) -> bool:
    try:
        return v is None or bool(v != v)
    except (TypeError, ValueError):
        return False


def _rows(context: dict[str, list], n: int) -> list[dict]:
    return [{k: v[i] for k, v in context.items()} for i in range(n)]


def _mean(values: np.ndarray) -> float | None:
    v = values[~np.isnan(values)]
    return round(float(v.mean()), 6) if len(v) else None


# ---------------------------------------------------------------------------------------------------- steps
def refresh_reward_model_if_due(cfg: FlywheelConfig, uri: str, df, specs, progress: bool, feedback=None):
    """(policy, reward model or None, earlier rows that got delayed feedback): retrain the reward model on the
    feedback of the last ``rewards.reward_model.history_days`` (delayed feedback joined) when enough new labels
    arrived, else reuse it."""
    from flywheel.rewards.calibration import choose_policy
    from flywheel.rewards.reward_training import labelled_history, refresh_reward_model

    history = labelled_history(cfg, df, uri, feedback=feedback)
    late = 0
    if feedback is not None and len(feedback) and len(history) and "request_id" in history.columns:
        ids = history["request_id"].astype(str)
        late = int((ids.isin(set(feedback["request_id"].astype(str)))
                    & ~ids.isin(set(df["request_id"].astype(str)))).sum())
    context = context_of(history)
    rcfg = cfg.rewards.reward_model
    n_labels = sum(binary_label(r, rcfg.labels, rcfg.stepped_in) is not None for r in _rows(context, len(history)))
    policy = choose_policy(cfg.rewards.calibration.policy, n_labels, cfg.rewards.reward_model.min_labels)
    rm = None
    if any(s.kind == "reward_model" for s in specs):
        rm = refresh_reward_model(cfg, history, prompts_of(history), allow_training=policy == "reward_model",
                                  progress=progress)
    return policy, rm, late


def score_components(cfg: FlywheelConfig, specs: list[ComponentSpec], rm, judge_client, prompts, completions,
                     context) -> dict[str, np.ndarray]:
    """Every component's column, zscore stats fitted on this snapshot, and the weighted ``total``."""
    graders = build_graders(specs, cfg, rm.folder if rm else None, cfg.rewards.reward_model.device, judge_client)
    columns = Composite(specs, graders, cfg.rewards.missing).score(prompts, completions, **context)
    for s in specs:
        s.fit(columns[s.name])
    columns["total"] = weighted_total(columns, specs, cfg.rewards.missing)  # with the fitted stats
    return columns


def write_spec(cfg: FlywheelConfig, specs: list[ComponentSpec], rm, judge_client) -> tuple[Path, str]:
    """The reward spec (components, fitted stats, reward model, judge, rubric hashes) as JSON; (path, hash)."""
    from flywheel.rewards.judge import load_rubric

    spec = {
        "version": 1, "components": specs_to_json(specs), "missing": cfg.rewards.missing,
        "reward_model": None if rm is None else {"folder": rm.folder, "version": rm.version, "sha": rm.sha},
        "judge": None if judge_client is None else {"model": judge_client.model, "params": judge_client.params},
        "rubrics": {s.name: load_rubric(s.params["rubric"]).sha for s in specs if s.kind == "llm_judge"},
    }
    h = spec_hash(spec)
    path = cfg.state / "rewards" / f"spec-{h[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**spec, "hash": h}, indent=2, default=str))
    return path, h


def write_scored(cfg: FlywheelConfig, df, uri: str, specs: list[ComponentSpec], columns, h: str) -> Path:
    out = df.copy()
    for s in specs:
        out[REWARD_PREFIX + s.name] = columns[s.name]
    out[REWARD_TOTAL] = columns["total"]
    path = cfg.state / "snapshots" / f"{Path(uri).stem}.scored-{h[:12]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)
    return path


def read_human_labels(path: str | Path) -> dict[str, float]:
    """request_id → label from JSONL ({"request_id", "label"}) or CSV (header request_id,label)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"rewards.calibration.labels_path: {p} not found")
    df = pd.read_json(p, lines=True) if p.suffix in {".jsonl", ".json"} else pd.read_csv(p)
    missing = {"request_id", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{p}: missing columns {sorted(missing)} (need request_id, label)")
    return {str(r): float(v) for r, v in zip(df["request_id"], df["label"])}


def write_calibration(cfg: FlywheelConfig, df, columns: dict[str, np.ndarray], h: str) -> str:
    """Agreement of every component and the total with the human labels → reports/calibration-<hash>.json."""
    from flywheel.rewards.calibration import calibrate

    labels = read_human_labels(cfg.rewards.calibration.labels_path)
    idx = [i for i, r in enumerate(df["request_id"].astype(str)) if r in labels]
    human = [labels[str(df["request_id"].iloc[i])] for i in idx]
    variants = {name: [float(v[i]) for i in idx] for name, v in columns.items()}
    report = calibrate(variants, human, cfg.rewards.calibration.label_threshold).to_dict()
    report["n_labels"] = len(idx)
    path = cfg.state / "reports" / f"calibration-{h[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return str(path)


# ---------------------------------------------------------------------------------------------------- the stage
def score(cfg: FlywheelConfig, uri: str, *, snapshot_hash: str, validation_report_uri: str = NONE,
          progress: bool = False) -> Scores:
    """Score the snapshot at ``uri`` with every configured component; write spec and scored Parquet.

    ``snapshot_hash`` and ``validation_report_uri`` name the validation the snapshot came from (lineage).
    """
    df = read_snapshot(uri)
    # 1b. delayed feedback (flywheel.feedback): latest event per field wins over the logged value
    table = load_feedback_table(cfg.state)
    df, joined = join_feedback(df, table)
    known = known_request_ids(cfg.state, df["request_id"]) if len(table) else set()
    unknown, unknown_uri = quarantine_unknown(cfg.state, table, known, snapshot_hash[:16])
    prompts, completions, context = prompts_of(df), [str(c) for c in df["completion"]], context_of(df)
    specs = specs_of(cfg)
    policy, rm, late = refresh_reward_model_if_due(cfg, uri, df, specs, progress, feedback=table)
    judge_client = None
    if any(s.kind == "llm_judge" for s in specs):
        from flywheel.rewards.judge import JudgeClient

        judge_client = JudgeClient.from_config(cfg.rewards.judge, cfg.state)
    columns = score_components(cfg, specs, rm, judge_client, prompts, completions, context)
    spec_path, h = write_spec(cfg, specs, rm, judge_client)
    scored_path = write_scored(cfg, df, uri, specs, columns, h)
    calibration_uri = write_calibration(cfg, df, columns, h) if cfg.rewards.calibration.labels_path else None
    stats = judge_client.stats if judge_client else None
    return Scores(
        snapshot_hash=snapshot_hash, validation_report_uri=validation_report_uri,
        scored_uri=str(scored_path), snapshot_uri=uri, rows=len(df), components=[s.name for s in specs],
        spec_uri=str(spec_path), spec_hash=h,
        means={k: _mean(v) for k, v in columns.items()},
        missing={s.name: int(np.isnan(columns[s.name]).sum()) for s in specs},
        policy=policy, reward_model_uri=rm.folder if rm else None, reward_model_version=rm.version if rm else None,
        reward_model_refreshed=bool(rm and rm.refreshed), reward_model_metrics=rm.metrics if rm else {},
        judge_requests=stats.requests if stats else 0, judge_cache_hits=stats.cache_hits if stats else 0,
        judge_counts=stats.as_dict() if stats else {},
        calibration_uri=calibration_uri, feedback_joined=joined, feedback_joined_history=late,
        feedback_unknown=unknown, feedback_quarantine_uri=unknown_uri, feedback_table_hash=table_hash(cfg.state),
    )


def retry_on_io(task, task_run, state) -> bool:
    """Retry transient I/O failures (judge endpoint, network, disk, registry); never bad data, config or bugs."""
    from flywheel.rewards.judge import JudgeError

    try:
        state.result()
    except JudgeError as exc:  # the endpoint down, slow or overloaded: worth a later retry; garbage verdicts are not
        return exc.transient
    except Exception as exc:  # noqa: BLE001 - classified by is_transient_io
        return is_transient_io(exc)
    return False


@task(name="score_snapshot", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_io)
def score_snapshot(cfg: FlywheelConfig, clean: Validation) -> Scores:
    """Score the clean snapshot (rules, KPI, reward model, LLM judge) and refresh the reward model when due."""
    return score(cfg, clean.clean_uri, snapshot_hash=clean.snapshot_hash, validation_report_uri=clean.report_uri)


def scores_from_files(scored_uri: str | Path, spec_uri: str | Path) -> Scores:
    """The ``Scores`` record of a scored snapshot and its spec on disk (for a train run started outside the flow)."""
    import pandas as pd

    from flywheel.rewards.online import load_spec

    scored, spec = Path(scored_uri), load_spec(spec_uri)
    df = pd.read_parquet(scored, columns=["request_id"])
    return Scores(snapshot_hash=NONE, validation_report_uri=NONE, scored_uri=str(scored), snapshot_uri=str(scored),
                  rows=len(df), components=[c["name"] for c in spec["components"]], spec_uri=str(spec_uri),
                  spec_hash=spec["hash"])
