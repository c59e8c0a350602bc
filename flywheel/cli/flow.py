"""CLI commands of the flow area."""
from flywheel.cli.app import app  # noqa: F401
