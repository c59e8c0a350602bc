"""``flywheel`` console script. Commands live with their area (one module each) and import heavy libraries lazily."""
from flywheel.cli import (
    agent,  # noqa: F401  (registers commands)
    config_cmds,  # noqa: F401
    data,  # noqa: F401
    demo_live,  # noqa: F401
    flow,  # noqa: F401
    gateway,  # noqa: F401
    release,  # noqa: F401
    rewards,  # noqa: F401
    train,  # noqa: F401
)
from flywheel.cli.app import app


def main() -> None:
    app()
