"""CLI of the flow area: ``flywheel demo | run | bootstrap | schedule | ui``.

Heavy libraries (prefect, mlflow, torch) are imported inside the commands so ``flywheel --help`` stays fast.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from flywheel.cli.app import app

REPO_ROOT = Path(__file__).resolve().parents[2]

# Offline, quiet defaults for every flow command (the Makefile exports the same); a busy laptop may need more than
# Prefect's default 20 s to start its temporary server.
_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def _env_defaults() -> None:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _config(config: Path | None, state: Path | None = None, source: str | None = None):
    from flywheel.config import ConfigError, load_config

    try:
        return load_config(config, overrides={"project.state_dir": str(state) if state else None, "source.uri": source})
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder: logs, state, report.json, report.html."),
    fast: bool = typer.Option(False, "--fast", help="Smaller logs and fewer steps (tests, smoke checks)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the demo logs and of training."),
    task: str = typer.Option("support_triage", "--task",
                             help="Built-in task whose logs the demo generates: support_triage or it_helpdesk."),
    agent: bool = typer.Option(False, "--agent", help="The agent demo instead: Acme Shop transcripts, the agent flow "
                                                      "(rejection-sampled SFT, multi-turn RL), held-out success."),
) -> None:
    """The whole cycle offline: 3 days of logs, day-0 champion, two nightly flows, summary table and report.

    With --agent: the agent flow on the built-in Acme Shop environment (agent_report.json / .md in --out)."""
    _env_defaults()
    if agent:
        from demo.agent_run import run_agent_demo

        try:
            result = run_agent_demo(out, fast=fast, seed=seed)
        except ValueError as e:
            _fail(f"demo --agent failed: {e}")
        typer.echo(f"report: {result['report_json']}  markdown: {result['report_md']}")
        return
    from demo.run import DemoError, run_demo

    try:
        report = run_demo(out, fast=fast, seed=seed, task=task)
    except (DemoError, ValueError) as e:
        _fail(f"demo failed: {e}")
    typer.echo(f"report: {report['report_json']}  html: {report['report_html']}")


@app.command("run")
def run(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config; omitted = embedded defaults."),
    day: str = typer.Option(None, "--day", help="Night to run (YYYY-MM-DD); default today in schedule.timezone."),
    state: Path = typer.Option(None, "--state", help="Override project.state_dir."),
    source: str = typer.Option(None, "--source", help="Override source.uri."),
) -> None:
    """Run one night of the continuous-improvement flow now (observe ... deploy)."""
    _env_defaults()
    cfg = _config(config, state, source)
    from flows.continuous_improvement import StageFailed, continuous_improvement

    overrides = {"project.state_dir": str(cfg.state), "source.uri": cfg.source.uri}
    try:
        night = continuous_improvement(config_path=str(config) if config else None, day=day, overrides=overrides)
    except StageFailed as e:
        _fail(str(e))
    typer.echo(night.model_dump_json(indent=2))


@app.command("bootstrap")
def bootstrap(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config; omitted = embedded defaults."),
    state: Path = typer.Option(None, "--state", help="Override project.state_dir."),
    source: str = typer.Option(None, "--source", help="Override source.uri."),
    day: str = typer.Option(None, "--day", help="Use logs up to this day (YYYY-MM-DD); default all."),
) -> None:
    """Day 0: build or load the base, SFT it on the logged answers production marked good, register the first "
      "champion."""
    _env_defaults()
    cfg = _config(config, state, source)
    from flows.bootstrap import bootstrap_champion
    from flows.continuous_improvement import StageFailed

    overrides = {"project.state_dir": str(cfg.state), "source.uri": cfg.source.uri}
    try:
        rec = bootstrap_champion(config_path=str(config) if config else None, day=day, overrides=overrides)
    except StageFailed as e:
        _fail(str(e))
    typer.echo(rec.model_dump_json(indent=2))


@app.command("schedule")
def schedule(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (schedule.cron, schedule.timezone)."),
    deploy: bool = typer.Option(False, "--deploy", help="Register deployments/prefect.yaml on a work pool instead of "
                                                        "serving."),
    pool: str = typer.Option("flywheel-process", "--pool", help="Work pool for --deploy (created as a process pool if "
                                                                "missing)."),
) -> None:
    """Run the nightly flow on its cron: serve it from this process (default) or deploy it to a work pool."""
    cfg = _config(config)
    cron, tz = cfg.schedule.cron, cfg.schedule.timezone
    if deploy:
        env = deploy_env(config, cron, tz)
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process"],
                       env=env, capture_output=True)
        cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file",
               str(REPO_ROOT / "deployments" / "prefect.yaml"), "--name", "nightly", "--pool", pool]
        rc = subprocess.run(cmd, env=env, cwd=REPO_ROOT).returncode
        if rc:
            _fail(f"prefect deploy failed (exit {rc}); is PREFECT_API_URL pointing at a running server?")
        typer.echo(f"deployed continuous-improvement/nightly on pool {pool!r}: cron {cron!r} ({tz}). "
                   f"Start a worker: prefect worker start --pool {pool}")
        return
    from prefect.schedules import Cron

    from flows.continuous_improvement import continuous_improvement

    typer.echo(f"serving continuous-improvement/nightly: cron {cron!r} ({tz}); Ctrl-C stops")
    params = {"config_path": str(Path(config).resolve()) if config else None}
    continuous_improvement.serve(name="nightly", schedule=Cron(cron, timezone=tz), parameters=params,
                                 tags=["rl-flywheel", "nightly"], limit=1)


def deploy_env(config: Path | None, cron: str, tz: str) -> dict[str, str]:
    """Environment that fills the ``{{ $VAR }}`` placeholders of deployments/prefect.yaml."""
    env = dict(os.environ)
    env.update(FLYWHEEL_HOME=str(REPO_ROOT), FLYWHEEL_CRON=cron, FLYWHEEL_TIMEZONE=tz,
               FLYWHEEL_CONFIG=str(Path(config).resolve()) if config else "")
    return env


@app.command("ui")
def ui(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (state dir, MLflow URI)."),
    state: Path = typer.Option(None, "--state", help="Override project.state_dir."),
    prefect_port: int = typer.Option(4200, help="Port of the Prefect server."),
    mlflow_port: int = typer.Option(5000, help="Port of the MLflow UI."),
) -> None:
    """Start the Prefect server and the MLflow UI on 127.0.0.1, print both URLs, stop both on Ctrl-C."""
    cfg = _config(config, state)
    from flywheel.registry import artifact_location, tracking_uri

    store = tracking_uri(cfg.state, cfg.registry.tracking_uri)
    from flywheel.procs import sigterm_as_interrupt, spawn, stop_groups

    procs: list[subprocess.Popen] = []
    with sigterm_as_interrupt():  # `kill <pid>` stops both servers (and their workers) like Ctrl-C does
        try:
            procs.append(spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(prefect_port)]))
            procs.append(spawn([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port",
                                str(mlflow_port), "--backend-store-uri", store, "--default-artifact-root",
                                artifact_location(cfg.state), "--workers", "1"]))
            typer.echo(f"Prefect UI: http://127.0.0.1:{prefect_port}   (runs of this machine's Prefect database)")
            typer.echo(f"MLflow UI:  http://127.0.0.1:{mlflow_port}   (store {store})")
            typer.echo(f"To send flow runs there: export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api")
            while all(p.poll() is None for p in procs):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            stop_groups(procs, timeout_s=15)  # both at once: Ctrl-C waits for the slower server, not the sum
