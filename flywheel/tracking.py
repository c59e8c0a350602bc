"""Where MLflow lives: the configured tracking URI, or SQLite + a local artifact folder under the state dir."""
from __future__ import annotations

from pathlib import Path


def tracking_uri(state_dir: str | Path, configured: str | None = None) -> str:
    """MLflow tracking/registry URI: ``configured`` if set, else ``sqlite:///<state_dir>/mlflow.db``."""
    if configured:
        return configured
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'mlflow.db'}"


def artifact_location(state_dir: str | Path) -> str:
    """Artifact root for experiments created on the embedded SQLite store."""
    path = (Path(state_dir) / "mlartifacts").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def ensure_experiment(name: str, state_dir: str | Path, configured_uri: str | None = None) -> str:
    """Point MLflow at the store and return the id of experiment ``name`` (created with a local artifact root)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(state_dir, configured_uri))
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if configured_uri else artifact_location(state_dir)
    return mlflow.create_experiment(name, artifact_location=location)
