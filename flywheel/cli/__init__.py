"""``flywheel`` console script. Commands live with their area (one module each) and import heavy libraries lazily."""
from flywheel.cli.app import app
from flywheel.cli import config_cmds  # noqa: F401  (registers commands)
from flywheel.cli import data  # noqa: F401
from flywheel.cli import train  # noqa: F401
from flywheel.cli import rewards  # noqa: F401
from flywheel.cli import release  # noqa: F401
from flywheel.cli import flow  # noqa: F401


def main() -> None:
    app()
