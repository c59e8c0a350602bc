"""CLI commands of the release area: evaluate, promote, rollback, releases, serve, deploy."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from flywheel.cli.app import app

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: embedded defaults).")


def _cfg(config: Path | None):
    from flywheel.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def _print_decision(decision) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"gates: {'PASS' if decision.passed else 'FAIL'}")
    for col in ("gate", "value", "threshold", "", "reason"):
        t.add_column(col)
    for g in decision.gates:
        t.add_row(g.name, "-" if g.value is None else f"{g.value:.4f}",
                  "-" if g.threshold is None else str(g.threshold), "pass" if g.passed else "[red]FAIL[/red]", g.reason)
    Console().print(t)


@app.command("evaluate")
def evaluate_cmd(
    candidate: Path = typer.Option(..., "--candidate", help="Candidate LoRA adapter folder."),
    snapshot: Path = typer.Option(None, "--snapshot",
                                  help="Scored (or clean) snapshot Parquet; its newest rows are the eval set."),
    base_model: str = typer.Option(None, "--base-model",
                                   help="Base model (default: champion's lineage tag or model.base)."),
    config: Path = ConfigOpt,
) -> None:
    """Evaluate a candidate adapter against the champion (or the base): report with CIs, gates, decision."""
    cfg = _cfg(config)
    if not (candidate / "adapter_config.json").is_file():
        _fail(f"--candidate {candidate}: not a LoRA adapter folder (no adapter_config.json)")
    if snapshot is None and cfg.evaluate.golden_set is None:
        _fail("no eval prompts: pass --snapshot or set evaluate.golden_set")
    from tasks.evaluate import run_evaluation

    try:
        result = run_evaluation(cfg, candidate, None, snapshot=snapshot, base_model=base_model)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    _print_decision(result.decision)
    typer.echo(f"report: {result.report_html}\nMLflow run: {result.run_id}")


@app.command("promote")
def promote_cmd(
    candidate: Path = typer.Option(..., "--candidate", help="Candidate LoRA adapter folder."),
    report: Path = typer.Option(..., "--report", help="report.json written by `flywheel evaluate`."),
    config: Path = ConfigOpt,
) -> None:
    """Register the candidate (alias challenger) and make it champion if its evaluation passed every gate."""
    cfg = _cfg(config)
    if not report.is_file():
        _fail(f"--report {report}: file not found")
    data = json.loads(report.read_text())
    from flywheel.records import Lineage
    from flywheel.registry import PromotionError, Registry

    registry = Registry.from_config(cfg)
    decision = data["decision"]
    try:
        rel = registry.release(candidate, passed=decision["passed"], reason=decision["reason"],
                               evaluated_champion=data["report"].get("champion_version"), lineage=Lineage(),
                               report_files=[p for p in (report, report.with_name("report.html")) if p.is_file()])
    except PromotionError as e:
        _fail(str(e))
    typer.echo(f"{registry.model_name} v{rel.version}: {rel.decision} ({rel.reason}); "
               f"champion {_v(rel.champion_version)}, previous {_v(rel.previous_version)}")


@app.command("rollback")
def rollback_cmd(config: Path = ConfigOpt,
                 reason: str = typer.Option("manual rollback", help="Recorded on the version.")) -> None:
    """Make the `previous` registry version champion again (then `flywheel deploy` to serve it)."""
    cfg = _cfg(config)
    from flywheel.registry import PromotionError, Registry

    registry = Registry.from_config(cfg)
    try:
        rel = registry.rollback(reason=reason)
    except PromotionError as e:
        _fail(str(e))
    typer.echo(f"{registry.model_name}: champion is {_v(rel.champion_version)} again; "
               f"previous {_v(rel.previous_version)}")


@app.command("releases")
def releases_cmd(config: Path = ConfigOpt) -> None:
    """Show the registered versions, their decisions and the aliases."""
    cfg = _cfg(config)
    from flywheel.registry import Registry

    typer.echo(json.dumps(Registry.from_config(cfg).state(), indent=2))


@app.command("serve")
def serve_cmd(
    config: Path = ConfigOpt,
    port: int = typer.Option(None, help="Override serve.port."),
    detach: bool = typer.Option(False, "--detach", help="Return once healthy; stop later with --stop."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server started with --detach (by its PID)."),
    render_manifests: Path = typer.Option(
        None, "--render-manifests", help="Write k8s + docker-compose files for the champion to this folder and exit."),
) -> None:
    """Start vLLM's OpenAI-compatible server: base model + the registry champion's LoRA adapter."""
    cfg = _cfg(config)
    from flywheel import serving

    if stop:
        info = serving.read_server_info(cfg.state)
        if info is None:
            _fail(f"no server recorded under {cfg.state / 'serve'}")
        typer.echo(f"stopping PID {info.pid}: {'stopped' if serving.stop_server(info.pid) else 'was not running'}")
        return
    try:
        if render_manifests is not None:
            for p in serving.render_champion_manifests(cfg, render_manifests):
                typer.echo(f"wrote {p}")
            return
        info = serving.serve_champion(cfg, port=port)
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"vLLM up at {info.url}/v1 in {info.started_s:.1f} s (PID {info.pid}); "
               f"adapters: {', '.join(info.adapters)}")
    if not detach:
        _serve_until_stopped(info.pid)


def _serve_until_stopped(pid: int) -> None:
    """Block until Ctrl-C or SIGTERM, then stop the server (stopping this command stops the server too)."""
    import signal
    import time

    from flywheel.serving import stop_server

    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo(f"stopping vLLM (PID {pid})")
        stop_server(pid)


@app.command("deploy")
def deploy_cmd(
    config: Path = ConfigOpt,
    prompts: Path = typer.Option(None, "--prompts",
                                 help="Golden JSONL for the smoke test (default evaluate.golden_set)."),
) -> None:
    """Hot-load the registry champion into the running server, smoke-test it, roll back on failure."""
    cfg = _cfg(config)
    from tasks.deploy import deploy_champion

    try:
        result = deploy_champion.fn(cfg, None, prompts_file=prompts)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        _fail(str(e))
    if result.status == "skipped":
        typer.echo(f"skipped: {result.reason}")
        raise typer.Exit(2)
    said = "deployed" if result.deployed else "FAILED" if result.status == "failed" else "ROLLED BACK"
    typer.echo(f"{said}: {result.adapter} — {result.reason}")
    if not result.deployed:
        raise typer.Exit(2)
