"""Reward model lifecycle for the judge stage: labels from feedback, held-out split, train, log, register, reuse.

Feedback accumulates: the model learns from the labelled rows of every validated snapshot of the last
``history_days`` (``labelled_history``), not from one night's rows only.
Labels: bad when a human stepped in (``rewards.reward_model.stepped_in``: escalated, edited), else the first present
field of ``rewards.reward_model.labels`` (``resolved``, then ``thumbs`` > 0). Preference
pairs: two completions of the same prompt with different labels (good ≻ bad). The split holds out whole prompts,
so no prompt is on both sides. The reward model is refreshed when at least ``refresh_min_new_labels`` labelled
rows were not seen by the current model; otherwise the current one (``<state>/models/reward_model/current.json``)
is reused. Each trained model is logged to MLflow and registered as ``<project>-reward-model``.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.base_model import build_base, resolve_base
from flywheel.rewards.calibration import auc
from flywheel.rewards.kpi import binary_label


@dataclass
class RewardModelRef:
    folder: str
    version: str | None
    sha: str
    refreshed: bool
    metrics: dict[str, float] = field(default_factory=dict)


def rm_root(cfg) -> Path:
    return cfg.state / "models" / "reward_model"


def current_reward_model(cfg) -> str | None:
    pointer = rm_root(cfg) / "current.json"
    if not pointer.is_file():
        return None
    folder = json.loads(pointer.read_text())["folder"]
    return folder if Path(folder, "reward_model.json").is_file() else None


def folder_sha(folder: str | Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name != "reward_model.json":
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def resolve_backbone(cfg, df=None) -> str:
    """Base model path: the policy's base ('policy'), MiniLM ('minilm') or a path."""
    backbone = cfg.rewards.reward_model.backbone
    if backbone == "minilm":
        from models.reward_model import minilm_path
        return minilm_path()
    if backbone != "policy":
        return backbone
    if cfg.model.base != "tiny":
        return cfg.model.base
    path = resolve_base(cfg.model.base, cfg.state)  # where the bootstrap builds the tiny base
    if (path / "config.json").is_file():
        return str(path)
    if df is None:
        raise FileNotFoundError(f"{path}: the tiny base is not built yet (run the bootstrap first)")
    rows = [{"messages": json.loads(m) if isinstance(m, str) else m, "completion": str(c)}
            for m, c in zip(df["messages"], df["completion"])]
    return str(build_base(path, rows, cfg.model.tiny, seed=cfg.train.seed))


@dataclass
class TrainingSet:
    texts_index: list[int]      # snapshot row of each example
    labels: list[float | None]  # pointwise label per example (None = unlabelled)
    groups: list[str]           # prompt key per example
    request_ids: list[str]


def training_set(df, prompts: list[list[dict]], label_fields: list[str],
                 stepped_in: list[str] | tuple[str, ...] = ()) -> TrainingSet:
    rows = df.to_dict("records")
    labels = [binary_label(r, label_fields, stepped_in) for r in rows]
    keep = [i for i, y in enumerate(labels) if y is not None]
    groups = [json.dumps(prompts[i], sort_keys=True) for i in keep]
    ids = [str(rows[i].get("request_id", i)) for i in keep]
    return TrainingSet(keep, [labels[i] for i in keep], groups, ids)


def preference_pairs(labels: list[float | None], groups: list[str], idx: list[int],
                     per_group: int = 4) -> list[tuple[int, int]]:
    """(good, bad) index pairs among ``idx`` sharing a prompt group, at most ``per_group`` per group."""
    by_group: dict[str, list[int]] = {}
    for i in idx:
        by_group.setdefault(groups[i], []).append(i)
    pairs = []
    for members in by_group.values():
        good = [i for i in members if labels[i] == 1.0]
        bad = [i for i in members if labels[i] == 0.0]
        pairs += [(g, b) for g in good for b in bad][:per_group]
    return pairs


_ID = re.compile(r"[A-Za-z0-9_-]*\d{4,}[A-Za-z0-9_-]*")  # a token with a run of 4+ digits: 123456, LAP-48213


def transplant_ids(completion: str, source_prompt: list[dict], target_prompt: list[dict]) -> str:
    """``completion`` written for ``source_prompt``, with each identifier it copied from that prompt (a token with a
    run of 4+ digits, prefix included) replaced by the identifier at the same place in ``target_prompt``: another
    request's answer, fitted to this one.

    >>> transplant_ids('{"id": "111111"}', [{"content": "order 111111"}], [{"content": "order 222222"}])
    '{"id": "222222"}'
    >>> transplant_ids('{"asset": "LAP-48213"}', [{"content": "on LAP-48213."}], [{"content": "DSK-10001 is slow"}])
    '{"asset": "DSK-10001"}'
    """
    def ids(prompt: list[dict]) -> list[str]:
        return [n for m in prompt for n in _ID.findall(str(m.get("content") or ""))]

    mapping = dict(zip(ids(source_prompt), ids(target_prompt)))
    return _ID.sub(lambda m: mapping.get(m.group(0), m.group(0)), completion)


def answer_template(completion: str) -> str:
    """The answer with its identifiers masked: answers that differ only in the ids they copied share a template.

    >>> answer_template('{"team": "access", "asset": "LAP-48213"}')
    '{"team": "access", "asset": "<id>"}'
    """
    return _ID.sub("<id>", completion.strip())


def swapped_negatives(prompts: list[list[dict]], completions: list[str], labels: list[float | None],
                      idx: list[int], per_good: int, seed: int, draw: str = "rows") -> list[tuple[int, str]]:
    """(row, text) negatives: for each good row of ``idx``, ``per_good`` answers logged for OTHER requests, ids
    transplanted, that differ from the row's own answer (``draw="mixed"``: of another answer template).

    Preferring the row's answer to these teaches the reward model to read the request: logs alone rarely show a
    right answer to the wrong request, so without them it scores an answer by how often that answer was right
    overall, and PPO exploits it. ``draw="rows"`` (the default) draws a labelled row uniformly; ``"mixed"`` alternates
(over rows and over each row's draws) between two pools:
    - a labelled row, uniformly: answers in proportion to how often they were logged, the common, confusable ones;
    - a template of the good rows, uniformly, then a row of it: an answer production seldom gives (so seldom right)
      is shown wrong for other requests as often as a common one. Without it, a policy that learns the rare answer
      for the requests that need it is not stopped from giving it everywhere (measured on ``it_helpdesk``, where
      production almost never answers ``access``).
    With free-text answers every answer is its own template, and both pools are uniform over rows."""
    rng = random.Random(seed)
    good = [i for i in idx if labels[i] == 1.0]
    by_template: dict[str, list[int]] = {}
    for j in good:
        by_template.setdefault(answer_template(completions[j]), []).append(j)
    templates = sorted(by_template)
    out: list[tuple[int, str]] = []
    for k, i in enumerate(good):
        own = answer_template(completions[i])
        for n in range(per_good):
            by_row = draw == "rows" or (k + n) % 2 == 0 or len(templates) < 2
            for _attempt in range(16):  # a draw of the row's own template is drawn again
                if by_row:
                    j = idx[rng.randrange(len(idx))]
                else:
                    rows = by_template[templates[rng.randrange(len(templates))]]
                    j = rows[rng.randrange(len(rows))]
                other = transplant_ids(completions[j], prompts[j], prompts[i])
                fits = j != i if draw == "rows" else answer_template(other) != own
                if fits and other.strip() != completions[i].strip():
                    out.append((i, other))
                    break
    return out


def _passed_snapshots(state: Path) -> list[Path]:
    """Clean snapshots whose validation passed (its report says so), oldest tag first."""
    out = []
    for clean in sorted((state / "snapshots").glob("*.clean.parquet")):
        report = state / "reports" / f"validation-{clean.name.split('.')[0]}.json"
        if report.is_file() and json.loads(report.read_text()).get("passed"):
            out.append(clean)
    return out


def labelled_history(cfg, df, snapshot_uri: str | Path | None = None, feedback=None):
    """The rows the reward model learns from: ``df`` (this night's clean snapshot) plus the labelled rows of the
    earlier validated snapshots within ``rewards.reward_model.history_days`` before ``df``'s newest row; one row per
    ``request_id`` (this night's wins). Later snapshots than ``df`` are never read, so a rerun of an old night trains
    on what that night knew. ``feedback`` (``flywheel.feedback.load_feedback_table``) is joined onto the earlier
    rows before they are filtered, so a label that arrived after their night still counts."""
    import pandas as pd
    import pyarrow.parquet as pq

    days = cfg.rewards.reward_model.history_days
    if days == 0 or "timestamp" not in df.columns or df.empty:
        return df
    newest = pd.to_datetime(df["timestamp"], utc=True).max()
    start = newest - pd.Timedelta(days=days)
    this = Path(str(snapshot_uri).removeprefix("file://")).resolve() if snapshot_uri else None
    rcfg = cfg.rewards.reward_model
    labels = [f for f in [*rcfg.labels, *rcfg.stepped_in] if f in df.columns]
    frames = []
    for path in _passed_snapshots(cfg.state):
        if this is not None and path.resolve() == this:
            continue
        names = set(pq.read_schema(path).names)
        if not {"request_id", "timestamp", *labels} <= names:
            continue  # not a snapshot of this schema
        old = pq.read_table(path, columns=[c for c in df.columns if c in names]).to_pandas()
        if feedback is not None:
            from flywheel.feedback import join_feedback

            old, _ = join_feedback(old, feedback)
        ts = pd.to_datetime(old["timestamp"], utc=True)
        keep = (ts >= start) & (ts <= newest) & old[labels].notna().any(axis=1)
        frames.append(old[keep])
    if not frames:
        return df
    both = pd.concat([*frames, df], ignore_index=True)
    return both.drop_duplicates("request_id", keep="last").reset_index(drop=True)


def split_groups(groups: list[str], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    keys = sorted(set(groups))
    random.Random(seed).shuffle(keys)
    held = set(keys[:max(1, round(len(keys) * holdout))])
    train = [i for i, g in enumerate(groups) if g not in held]
    test = [i for i, g in enumerate(groups) if g in held]
    return train, test


def train_on_snapshot(cfg, df, prompts: list[list[dict]], out_dir: str | Path, progress: bool = False):
    """Train + evaluate on held-out prompts; returns (saved folder, metrics)."""
    from models.reward_model import (
        RewardModelTrainConfig,
        format_input,
        raw_scores,
        save_reward_model,
        train_reward_model,
    )

    rcfg = cfg.rewards.reward_model
    ts = training_set(df, prompts, rcfg.labels, rcfg.stepped_in)
    if len(ts.labels) < 2:
        raise ValueError(f"reward model: {len(ts.labels)} labelled rows; fields {rcfg.labels} are empty")
    base = resolve_backbone(cfg, df)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base)
    completions = [str(c) for c in df["completion"]]
    texts = [format_input(tok, prompts[r], completions[r]) for r in ts.texts_index]
    train, test = split_groups(ts.groups, rcfg.holdout, rcfg.seed)
    local = {g: k for k, g in enumerate(train)}
    pairs = [(local[a], local[b]) for a, b in preference_pairs(ts.labels, ts.groups, train)]
    row_prompts = [prompts[r] for r in ts.texts_index]
    row_completions = [completions[r] for r in ts.texts_index]
    train_texts, train_labels = [texts[i] for i in train], [ts.labels[i] for i in train]
    for i, other in swapped_negatives(row_prompts, row_completions, ts.labels, train, rcfg.swap_negatives, rcfg.seed,
                                      rcfg.swap_draw):
        train_texts.append(format_input(tok, row_prompts[i], other))
        train_labels.append(None)  # no pointwise label: only "worse than the row's own good answer"
        pairs.append((local[i], len(train_texts) - 1))
    tcfg = RewardModelTrainConfig(epochs=rcfg.epochs, batch_size=rcfg.batch_size, learning_rate=rcfg.learning_rate,
                                  lora_r=rcfg.lora_r, lora_target_modules=rcfg.lora_target_modules,
                                  max_length=rcfg.max_length, objective=rcfg.objective, seed=rcfg.seed,
                                  device=rcfg.device)
    bar = _bar(progress)
    t0 = time.perf_counter()
    result = train_reward_model(base, train_texts, train_labels, pairs, tcfg, progress=bar)
    seconds = time.perf_counter() - t0
    scores = raw_scores(result.model, result.tokenizer, [texts[i] for i in test], rcfg.max_length, rcfg.device)
    y = [ts.labels[i] for i in test]
    test_pairs = preference_pairs(ts.labels, ts.groups, test)
    pos = {g: k for k, g in enumerate(test)}
    swaps = swapped_negatives(row_prompts, row_completions, ts.labels, test, 1, rcfg.seed + 1, rcfg.swap_draw)
    swap_scores = raw_scores(result.model, result.tokenizer, [format_input(tok, row_prompts[i], o) for i, o in swaps],
                             rcfg.max_length, rcfg.device) if swaps else []
    metrics = {
        "heldout_auc": auc(scores, y),
        "heldout_accuracy": round(sum((s > 0) == (t == 1.0) for s, t in zip(scores, y)) / max(len(y), 1), 6),
        "heldout_pair_accuracy": (sum(scores[pos[a]] > scores[pos[b]] for a, b in test_pairs) / len(test_pairs)
                                  if test_pairs else float("nan")),
        # held-out good answers scored above another request's answer (numbers transplanted): reads the request?
        "heldout_swap_accuracy": (sum(scores[pos[i]] > r for (i, _), r in zip(swaps, swap_scores)) / len(swaps)
                                  if swaps else float("nan")),
        "n_train": float(len(train)), "n_heldout": float(len(test)), "n_pairs": float(len(pairs)),
        "train_seconds": round(seconds, 3), "final_loss": result.losses[-1] if result.losses else float("nan"),
    }
    folder = save_reward_model(result, out_dir, base, rcfg.max_length,
                               extra={"metrics": metrics, "labels": rcfg.labels, "objective": rcfg.objective})
    (Path(folder) / "seen_request_ids.json").write_text(json.dumps(sorted(set(ts.request_ids))))
    return str(folder), metrics


def _bar(enabled: bool):
    if not enabled:
        return None
    from rich.progress import Progress
    state: dict = {}

    def update(step: int, total: int, loss: float) -> None:
        if "p" not in state:
            state["p"] = Progress(transient=True)
            state["p"].start()
            state["t"] = state["p"].add_task("reward model", total=total)
        state["p"].update(state["t"], completed=step, description=f"reward model loss {loss:.3f}")
        if step >= total:
            state["p"].stop()
    return update


def log_and_register(cfg, folder: str, metrics: dict[str, float]) -> str | None:
    """Log the folder as run artifacts and register it as ``<project>-reward-model``; returns the version."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from flywheel.registry import ensure_experiment

    exp = ensure_experiment(f"{cfg.project.name}-reward-model", cfg.state, cfg.registry.tracking_uri)
    rcfg = cfg.rewards.reward_model
    with mlflow.start_run(experiment_id=exp, run_name="reward-model") as run:
        mlflow.log_params({k: str(v) for k, v in rcfg.model_dump().items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.log_artifacts(folder, artifact_path="reward_model")
        client = MlflowClient()
        name = f"{cfg.project.name}-reward-model"
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Reward model trained on logged feedback (rl-flywheel).")
        mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/reward_model", run_id=run.info.run_id,
                                         tags={"heldout_auc": str(metrics.get("heldout_auc"))})
        client.set_registered_model_alias(name, "current", mv.version)
    return str(mv.version)


def refresh_reward_model(cfg, df, prompts: list[list[dict]], allow_training: bool = True,
                         progress: bool = False) -> RewardModelRef | None:
    """Retrain when enough new labels arrived (and the policy allows it), else reuse the current model."""
    rcfg = cfg.rewards.reward_model
    root = rm_root(cfg)
    current = current_reward_model(cfg)
    ts = training_set(df, prompts, rcfg.labels, rcfg.stepped_in)
    seen: set[str] = set()
    if current:
        seen_path = Path(current) / "seen_request_ids.json"
        seen = set(json.loads(seen_path.read_text())) if seen_path.is_file() else set()
    new = len(set(ts.request_ids) - seen)
    enough = len(ts.labels) >= rcfg.min_labels and new >= (rcfg.refresh_min_new_labels if current else 1)
    if allow_training and enough:
        ids_hash = hashlib.sha256(str(sorted(ts.request_ids)).encode()).hexdigest()[:8]
        folder = root / f"rm-{time.strftime('%Y%m%d-%H%M%S')}-{ids_hash}"
        folder, metrics = train_on_snapshot(cfg, df, prompts, folder, progress)
        version = log_and_register(cfg, folder, metrics)
        root.mkdir(parents=True, exist_ok=True)
        (root / "current.json").write_text(json.dumps({"folder": str(Path(folder).resolve()), "version": version}))
        return RewardModelRef(str(Path(folder).resolve()), version, folder_sha(folder), True, metrics)
    if current is None:
        return None
    meta = json.loads((Path(current) / "reward_model.json").read_text())
    version = json.loads((root / "current.json").read_text()).get("version")
    return RewardModelRef(current, version, folder_sha(current), False, meta.get("metrics", {}))
