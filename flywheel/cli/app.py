"""The Typer application behind the ``flywheel`` console script; area modules add their commands to it."""
import typer

app = typer.Typer(
    name="flywheel",
    help="rl-flywheel: production logs -> data contracts -> rewards -> LoRA PPO -> gated release -> vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(help="Check and show the YAML configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
