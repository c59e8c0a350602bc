"""CLI commands of the train area."""
from flywheel.cli.app import app  # noqa: F401
