"""CLI commands of the rewards area."""
from flywheel.cli.app import app  # noqa: F401
