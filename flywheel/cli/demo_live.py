"""``flywheel demo-live``: the loop closed at serving (``demo/live.py``): champion served, the gateway in front,
simulated users and their delayed feedback, then one night on what the gateway captured."""
from __future__ import annotations

from pathlib import Path

import typer

from flywheel.cli.app import app


@app.command("demo-live")
def demo_live(
    out: Path = typer.Option(Path("demo_out"), "--out", help="A demo output folder (the fast demo is run first "
                                                             "when it has no champion)."),
    task: str = typer.Option("support_triage", "--task", help="Built-in task, when the demo must be run first."),
    requests: int = typer.Option(240, "--requests", min=1, help="Requests the simulated users send."),
    users: int = typer.Option(120, "--users", min=1, help="Simulated users (the sticky routing key)."),
    share: float = typer.Option(0.2, "--share", min=0.0, max=1.0, help="Canary share once there is a challenger."),
    upstream: str = typer.Option("auto", "--upstream", help="auto (vLLM when .venv-vllm exists, else the replay "
                                                            "server), vllm or replay."),
    bootstrap_only: bool = typer.Option(False, "--bootstrap-only", help="With no champion in --out: run only the "
                                                                         "fast demo's day 0 (the champion)."),
    release_mode: str = typer.Option("canary", "--release-mode", help="The night's registry.release_mode: canary "
                                                                      "or all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the users, their feedback and the demo."),
) -> None:
    """Serve the champion, put the gateway in front, send users' requests and feedback, run one night on them."""
    from flywheel.cli.flow import _env_defaults

    _env_defaults()
    from demo.live import LiveDemoError, run_live

    try:
        result = run_live(out, task=task, requests=requests, users=users, share=share, seed=seed,
                          upstream_kind=upstream, bootstrap_only=bootstrap_only, release_mode=release_mode)
    except (LiveDemoError, ValueError) as e:
        typer.echo(f"demo-live failed: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"live: {Path(out) / 'live.json'}  ({result['rows_captured']} rows captured, "
               f"{result['feedback_joined']} feedback joined, decision {result['decision']})")
