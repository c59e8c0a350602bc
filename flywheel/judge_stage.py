"""The judge stage: clean snapshot → scored Parquet (one ``reward_<name>`` column per component + ``reward_total``).

1. read the clean snapshot; prompts are its ``messages`` (JSON chat), completions its ``completion``;
2. refresh the reward model when enough new feedback labels arrived (else reuse the current one);
3. score every component (rules, KPI, reward model, LLM judge), fit the zscore stats, compute the total;
4. write the scored Parquet and the reward spec (JSON, hashed for lineage), and the calibration report when human
   labels are configured; return a small ``JudgeRecord``.

``build_online_reward(cfg, record)`` turns the spec back into PPO's reward ``fn(prompts, completions)``: rules +
reward model + (cached) judge, weighted; KPI components are left out (they cannot score new samples).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from flywheel.config.rewards import ComponentConfig
from flywheel.rewards.composite import ComponentSpec, Composite, spec_hash, specs_to_json, weighted_total
from flywheel.rewards.kpi import binary_label, kpi_grader
from flywheel.rewards.rules import build_rule
from flywheel.schema import FEEDBACK_FIELDS, REWARD_PREFIX, REWARD_TOTAL

log = logging.getLogger(__name__)
ORDER_ID = r"(?<!\d)\d{6}(?!\d)"


class JudgeRecord(BaseModel):
    """What the judge stage hands on (URIs, counts, hashes)."""

    scored_uri: str
    snapshot_uri: str
    rows: int
    components: list[str]
    spec_uri: str
    spec_hash: str
    means: dict[str, float | None] = Field(default_factory=dict, description="Mean of each component and the total (NaN skipped).")
    missing: dict[str, int] = Field(default_factory=dict, description="Rows where a component is missing.")
    policy: str = "reward_model"
    reward_model_uri: str | None = None
    reward_model_version: str | None = None
    reward_model_refreshed: bool = False
    reward_model_metrics: dict[str, float] = Field(default_factory=dict)
    judge_requests: int = 0
    judge_cache_hits: int = 0
    calibration_uri: str | None = None


def default_components() -> list[ComponentConfig]:
    """Demo defaults: answer format (JSON schema with the intent enum), order id copied, reward model, KPI."""
    from flywheel.demo_data import INTENTS

    schema = {"type": "object", "required": ["intent", "order_id"], "additionalProperties": False,
              "properties": {"intent": {"enum": list(INTENTS)}, "order_id": {"type": "string", "pattern": r"^\d{6}$"}}}
    return [
        ComponentConfig(name="format", kind="rule", weight=1.0, params={"check": "json_schema", "schema": schema}),
        ComponentConfig(name="order_id", kind="rule", weight=1.0, params={"check": "extract_compare", "pattern": ORDER_ID}),
        ComponentConfig(name="reward_model", kind="reward_model", weight=1.0),
        ComponentConfig(name="kpi", kind="kpi", weight=1.0, params={"resolved": 1.0, "escalated": -1.0, "thumbs": 0.5}),
    ]


def components_of(cfg) -> list[ComponentConfig]:
    comps = list(cfg.rewards.components) or default_components()
    names = [c.name for c in comps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"rewards.components: duplicate names {dupes}")
    return comps


# ---------------------------------------------------------------- snapshot helpers

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
    ctx = {c: [None if _isna(v) else v for v in df[c].tolist()] for c in df.columns if c not in ("messages", "completion")}
    for f in FEEDBACK_FIELDS:
        ctx.setdefault(f, [None] * len(df))
    return ctx


def _isna(v: Any) -> bool:
    try:
        return v is None or bool(v != v)
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- graders from specs

def build_graders(specs: list[ComponentSpec], cfg, reward_model_folder: str | None, device: str = "cpu",
                  judge_client=None) -> dict[str, Callable]:
    graders: dict[str, Callable] = {}
    scorer = None
    for i, s in enumerate(specs):
        where = f"rewards.components[{i}].params"
        if s.kind == "rule":
            graders[s.name] = build_rule(s.params, where)
        elif s.kind == "kpi":
            graders[s.name] = kpi_grader({k: float(v) for k, v in s.params.items()} or None)
        elif s.kind == "reward_model":
            if reward_model_folder is None:
                graders[s.name] = _missing_grader
            else:
                if scorer is None:
                    from models.reward_model import RewardModelScorer
                    scorer = RewardModelScorer(reward_model_folder, device=device)
                graders[s.name] = scorer
        elif s.kind == "llm_judge":
            from flywheel.rewards.judge import JudgeClient, judge_grader, load_rubric
            if "rubric" not in s.params:
                raise ValueError(f"{where}.rubric: an llm_judge component needs a rubric (name or .md path)")
            if judge_client is None:
                judge_client = JudgeClient.from_config(cfg.rewards.judge, cfg.state)
            graders[s.name] = judge_grader(judge_client, load_rubric(s.params["rubric"]))
    return graders


def _missing_grader(prompts, completions, **context) -> list[float]:
    """No reward model yet (too few labels): the component is missing for every row, not zero."""
    return [math.nan] * len(completions)


# ---------------------------------------------------------------- the stage

def run_judge(cfg, clean: Any, progress: bool = False) -> JudgeRecord:
    """Score the clean snapshot ``clean`` (a validate record with ``clean_uri``, or a Parquet path)."""
    from flywheel.rewards.calibration import choose_policy
    from flywheel.rewards.reward_training import refresh_reward_model

    uri = str(getattr(clean, "clean_uri", clean))
    df = read_snapshot(uri)
    prompts, completions, context = prompts_of(df), [str(c) for c in df["completion"]], context_of(df)
    comps = components_of(cfg)
    specs = [ComponentSpec(c.name, c.kind, c.weight, c.normalize, dict(c.params)) for c in comps]

    # 1. reward model: refresh when enough new labels arrived, else reuse
    n_labels = sum(binary_label(r, cfg.rewards.reward_model.labels) is not None for r in _rows(context, len(df)))
    policy = choose_policy(cfg.rewards.calibration.policy, n_labels, cfg.rewards.reward_model.min_labels)
    rm = None
    if any(s.kind == "reward_model" for s in specs):
        rm = refresh_reward_model(cfg, df, prompts, allow_training=policy == "reward_model", progress=progress)

    # 2. score every component, fit normalisation, total
    judge_client = None
    if any(s.kind == "llm_judge" for s in specs):
        from flywheel.rewards.judge import JudgeClient
        judge_client = JudgeClient.from_config(cfg.rewards.judge, cfg.state)
    graders = build_graders(specs, cfg, rm.folder if rm else None, cfg.rewards.reward_model.device, judge_client)
    columns = Composite(specs, graders, cfg.rewards.missing).score(prompts, completions, **context)
    for s in specs:
        s.fit(columns[s.name])
    columns["total"] = weighted_total(columns, specs, cfg.rewards.missing)  # with the fitted stats

    # 3. spec (lineage) and scored Parquet
    spec = {
        "version": 1, "components": specs_to_json(specs), "missing": cfg.rewards.missing,
        "reward_model": None if rm is None else {"folder": rm.folder, "version": rm.version, "sha": rm.sha},
        "judge": None if judge_client is None else {"model": judge_client.model, "params": judge_client.params},
        "rubrics": _rubric_shas(specs),
    }
    h = spec_hash(spec)
    spec_dir = cfg.state / "rewards"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_path = spec_dir / f"spec-{h[:16]}.json"
    spec_path.write_text(json.dumps({**spec, "hash": h}, indent=2, default=str))
    out = df.copy()
    for s in specs:
        out[REWARD_PREFIX + s.name] = columns[s.name]
    out[REWARD_TOTAL] = columns["total"]
    scored_dir = cfg.state / "snapshots"
    scored_dir.mkdir(parents=True, exist_ok=True)
    scored_path = scored_dir / f"{Path(uri).stem}.scored-{h[:12]}.parquet"
    out.to_parquet(scored_path, index=False)

    # 4. calibration against human labels, when configured
    calibration_uri = None
    if cfg.rewards.calibration.labels_path:
        calibration_uri = write_calibration(cfg, df, columns, h)

    stats = judge_client.stats if judge_client else None
    return JudgeRecord(
        scored_uri=str(scored_path), snapshot_uri=uri, rows=len(df), components=[s.name for s in specs],
        spec_uri=str(spec_path), spec_hash=h,
        means={k: _mean(v) for k, v in columns.items()},
        missing={s.name: int(np.isnan(columns[s.name]).sum()) for s in specs},
        policy=policy, reward_model_uri=rm.folder if rm else None, reward_model_version=rm.version if rm else None,
        reward_model_refreshed=bool(rm and rm.refreshed), reward_model_metrics=rm.metrics if rm else {},
        judge_requests=stats.requests if stats else 0, judge_cache_hits=stats.cache_hits if stats else 0,
        calibration_uri=calibration_uri,
    )


def _rows(context: dict[str, list], n: int) -> list[dict]:
    return [{k: v[i] for k, v in context.items()} for i in range(n)]


def _mean(values: np.ndarray) -> float | None:
    v = values[~np.isnan(values)]
    return round(float(v.mean()), 6) if len(v) else None


def _rubric_shas(specs: list[ComponentSpec]) -> dict[str, str]:
    from flywheel.rewards.judge import load_rubric
    return {s.name: load_rubric(s.params["rubric"]).sha for s in specs if s.kind == "llm_judge"}


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


def write_calibration(cfg, df, columns: dict[str, np.ndarray], h: str) -> str:
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


# ---------------------------------------------------------------- online reward for PPO

def load_spec(spec_uri: str | Path) -> dict:
    return json.loads(Path(spec_uri).read_text())


def build_online_reward(cfg, record: JudgeRecord | str | Path | None = None, device: str | None = None,
                        include_judge: bool = True) -> Composite:
    """PPO's reward ``fn(prompts, completions) -> list[float]`` from the judge stage's spec (``record`` or its
    ``spec_uri``): rules + reward model + (cached) judge, weighted, normalised exactly as in the scored snapshot.

    Without a record it uses the config's components with the current reward model and no zscore stats.
    """
    device = device or cfg.rewards.reward_model.device
    if record is None:
        from flywheel.rewards.reward_training import current_reward_model
        specs = [ComponentSpec(c.name, c.kind, c.weight, c.normalize, dict(c.params)) for c in components_of(cfg)]
        rm_folder, missing = current_reward_model(cfg), cfg.rewards.missing
    else:
        spec = load_spec(getattr(record, "spec_uri", None) or (record["spec_uri"] if isinstance(record, dict) else record))
        specs = [ComponentSpec(**s) for s in spec["components"]]
        rm_folder, missing = (spec["reward_model"] or {}).get("folder"), spec["missing"]
    specs = [s for s in specs if s.kind != "kpi" and (include_judge and cfg.rewards.judge.base_url or s.kind != "llm_judge")]
    if not specs:
        raise ValueError("rewards.components: no component can score new samples (only KPI); add a rule or reward_model")
    return Composite(specs, build_graders(specs, cfg, rm_folder, device), missing)
