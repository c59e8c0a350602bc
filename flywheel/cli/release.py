"""CLI commands of the release area."""
from flywheel.cli.app import app  # noqa: F401
