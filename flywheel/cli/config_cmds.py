"""``flywheel config check|show``."""
from pathlib import Path

import typer

from flywheel.cli.app import config_app


@config_app.command("check")
def check(file: Path = typer.Argument(..., help="YAML config file.")) -> None:
    """Validate FILE; exit 1 with every bad key path named."""
    from flywheel.config import ConfigError, load_config

    try:
        load_config(file)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: OK")


@config_app.command("show")
def show(file: Path = typer.Argument(None, help="YAML config file; omitted = embedded defaults.")) -> None:
    """Print the effective config (defaults filled in, secrets masked)."""
    from flywheel.config import ConfigError, load_config, render_config

    try:
        cfg = load_config(file)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(render_config(cfg), nl=False)


@config_app.command("reference")
def reference() -> None:
    """Print the configuration reference (every key, type, default, meaning) as Markdown."""
    from flywheel.config import render_reference

    typer.echo(render_reference())
