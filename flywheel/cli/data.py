"""CLI commands of the data area."""
from flywheel.cli.app import app  # noqa: F401
