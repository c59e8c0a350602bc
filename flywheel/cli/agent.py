"""CLI of the agent area: ``flywheel agent-train`` (flows/agent_training.py) and ``flywheel agent-logs``."""
from __future__ import annotations

from pathlib import Path

import typer

from flywheel.cli.app import app
from flywheel.cli.flow import _config, _env_defaults, _fail


@app.command("agent-logs")
def agent_logs(
    out: Path = typer.Option(..., "--out", help="Folder to write dt=YYYY-MM-DD/*.jsonl agent transcripts to."),
    days: int = typer.Option(3, "--days"),
    conversations_per_day: int = typer.Option(200, "--conversations-per-day"),
    error_rate: float = typer.Option(0.35, "--error-rate", help="Share of conversations with a production mistake."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Production agent transcripts of the built-in Acme Shop environment (a noisy production agent), one row per
    model call in the interaction-log format: what `agent.transcripts` points at in the offline demo."""
    from demo.agent_logs import generate_agent_logs

    try:
        summary = generate_agent_logs(out, days=days, conversations_per_day=conversations_per_day, seed=seed,
                                      error_rate=error_rate)
    except ValueError as e:
        _fail(f"agent-logs: {e}")
    typer.echo(f"{summary.conversations} conversations, {summary.rows} model calls, production success "
               f"{summary.success_rate:.3f} -> {out}")


@app.command("agent-train")
def agent_train(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config; omitted = embedded defaults."),
    state: Path = typer.Option(None, "--state", help="Override project.state_dir."),
) -> None:
    """Train the project's agent in its mock environment: evaluate the champion on held-out tasks, rejection-sample
    its good episodes into a dataset, SFT, multi-turn RL, evaluate, promote (`<model>-agent`)."""
    _env_defaults()
    cfg = _config(config, state)
    from flows.agent_training import agent_training

    try:
        record = agent_training(cfg)
    except ValueError as e:
        _fail(f"agent-train: {e}")
    typer.echo(record.model_dump_json(indent=2, exclude={"champion": {"success_by_task"},
                                                         "candidate": {"success_by_task"}}))
