"""``flywheel gateway``: the capture gateway (OpenAI-compatible proxy) in front of the vLLM server."""
from __future__ import annotations

from pathlib import Path

import typer

from flywheel.cli.app import app


@app.command("gateway")
def gateway(config: Path | None = typer.Option(None, "--config", "-c", help="flywheel.yaml"),
            host: str | None = typer.Option(None, help="Listen address (default gateway.host)."),
            port: int | None = typer.Option(None, help="Listen port (default gateway.port)."),
            upstream: str | None = typer.Option(None, help="Upstream base URL with /v1 (default "
                                                           "gateway.upstream_url)."),
            log_level: str = typer.Option("warning", help="uvicorn log level.")) -> None:
    """Serve /v1/chat/completions, /v1/feedback, /v1/models and /metrics; every call becomes a log row."""
    import uvicorn

    from flywheel.config import load_config
    from flywheel.gateway.app import create_app

    cfg = load_config(config, {"gateway.host": host, "gateway.port": port, "gateway.upstream_url": upstream})
    application = create_app(cfg)
    typer.echo(f"gateway on http://{cfg.gateway.host}:{cfg.gateway.port}/v1 -> {cfg.gateway.upstream_url}; "
               f"capture -> {cfg.gateway.capture.sink or cfg.source.uri}", err=True)
    uvicorn.run(application, host=cfg.gateway.host, port=cfg.gateway.port, log_level=log_level, access_log=False,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=30)


@app.command("canary")
def canary(config: Path | None = typer.Option(None, "--config", "-c", help="flywheel.yaml"),
           apply: bool = typer.Option(False, "--apply", help="Move the registry's aliases as decided."),
           since: str | None = typer.Option(None, help="Only partitions from this day (YYYY-MM-DD)."),
           as_json: bool = typer.Option(False, "--json", help="Print the decision record as JSON.")) -> None:
    """Champion vs challenger on the captured rows and feedback in the sink: promote, keep or roll back."""
    import json

    from flywheel.config import load_config
    from flywheel.gateway.offline import decide_from_logs

    decision = decide_from_logs(load_config(config), apply=apply, since=since)
    if decision is None:
        typer.echo("no canary: no challenger in the registry, or it is the champion; nothing to decide")
        raise typer.Exit(0)
    if as_json:
        typer.echo(json.dumps(decision.model_dump(mode="json"), indent=2))
        return
    typer.echo(f"{decision.decision} (applied: {decision.applied}): {decision.reason}")
    for check in decision.checks:
        typer.echo(f"  {'pass' if check.passed else 'FAIL'} {check.name}: {check.value} vs {check.threshold}: "
                   f"{check.reason}")
