"""CLI commands of the rewards area: ``flywheel judge``, ``flywheel train-reward-model``, ``flywheel "
  "judge-serve-replay``."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from flywheel.cli.app import app


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _file_hash(path: Path) -> str:
    """Content hash of a snapshot scored outside the flow (its lineage id)."""
    import hashlib

    if not path.is_file():
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _config(config: Path | None, state: Path | None, judge_url: str | None = None):
    from flywheel.config import ConfigError, load_config

    try:
        return load_config(config, overrides={"project.state_dir": str(state) if state else None,
                                              "rewards.judge.base_url": judge_url})
    except ConfigError as e:
        _fail(str(e))


@app.command("score")
def score(
    snapshot: Path = typer.Option(..., "--snapshot", help="Clean snapshot Parquet (validate's clean_uri)."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: embedded demo defaults)."),
    state: Path = typer.Option(None, "--state", help="State folder (overrides project.state_dir)."),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint (overrides "
                                                            "rewards.judge.base_url)."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Score a clean snapshot: one reward_<component> column per component + reward_total; refresh the reward model."""
    from flywheel.rewards.judge import JudgeError
    from tasks.score import score as score_file

    cfg = _config(config, state, judge_url)
    try:
        rec = score_file(cfg, str(snapshot), snapshot_hash=_file_hash(snapshot), progress=not as_json)
    except (FileNotFoundError, ValueError, JudgeError) as e:
        _fail(f"score: {e}")
    if as_json:
        typer.echo(rec.model_dump_json(indent=2))
        return
    typer.echo(f"scored {rec.rows} rows -> {rec.scored_uri}")
    typer.echo(f"reward spec {rec.spec_hash[:16]} ({rec.spec_uri}), policy: {rec.policy}")
    for name, mean in rec.means.items():
        miss = rec.missing.get(name, 0)
        shown = "n/a" if mean is None else f"{mean:+.3f}"
        typer.echo(f"  {name:<16} mean {shown}" + (f"  missing {miss}" if miss else ""))
    if rec.reward_model_uri:
        state_word = "trained" if rec.reward_model_refreshed else "reused"
        m = rec.reward_model_metrics
        typer.echo(f"reward model {state_word}: v{rec.reward_model_version} {rec.reward_model_uri}"
                   + (f"  held-out AUC {m['heldout_auc']:.3f}" if "heldout_auc" in m else ""))
    if rec.judge_requests or rec.judge_cache_hits:
        c = rec.judge_counts
        extra = ", ".join(f"{c[k]} {k.replace('_', ' ')}" for k in ("retries", "failures", "budget_missing",
                                                                    "tokens_in", "tokens_out") if c.get(k))
        typer.echo(f"judge: {rec.judge_requests} requests, {rec.judge_cache_hits} cached verdicts"
                   + (f", {extra}" if extra else ""))


@app.command("train-reward-model")
def train_reward_model(
    snapshot: Path = typer.Option(..., "--snapshot", help="Snapshot Parquet with feedback columns."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config."),
    state: Path = typer.Option(None, "--state", help="State folder (overrides project.state_dir)."),
    out: Path = typer.Option(None, "--out", help="Folder for the reward model (default: "
                                                 "<state>/models/reward_model/manual)."),
    register: bool = typer.Option(True, "--register/--no-register", help="Log to MLflow and register "
                                                                         "<project>-reward-model."),
) -> None:
    """Train the reward model on the snapshot's feedback labels; print held-out AUC/accuracy."""
    from flywheel.rewards.reward_training import log_and_register, rm_root, train_on_snapshot
    from tasks.score import prompts_of, read_snapshot

    cfg = _config(config, state)
    try:
        df = read_snapshot(snapshot)
        folder, metrics = train_on_snapshot(cfg, df, prompts_of(df), out or rm_root(cfg) / "manual", progress=True)
    except (FileNotFoundError, ValueError) as e:
        _fail(f"train-reward-model: {e}")
    version = log_and_register(cfg, folder, metrics) if register else None
    typer.echo(json.dumps({"folder": folder, "registered_version": version, **metrics}, indent=2))


@app.command("judge-replay-server")
def judge_replay_server(
    port: int = typer.Option(8089, "--port", help="Port on 127.0.0.1."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", help="Added latency per request."),
) -> None:
    """Serve a local OpenAI-compatible judge that replays scripted verdicts (offline demos, smoke tests)."""
    import time

    from flywheel.rewards.replay_server import ReplayServer

    with ReplayServer(latency_s=latency_ms / 1000, port=port) as s:
        typer.echo(f"replay judge on {s.base_url} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
