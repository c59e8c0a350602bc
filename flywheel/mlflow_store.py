"""Where MLflow lives for a state dir: the tracking URI (SQLite under the state dir unless configured), the artifact
root, the experiment, a client, and the code revision that lineage tags record."""
from __future__ import annotations

import subprocess
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


def code_revision() -> str:
    """``git rev-parse HEAD`` of the checkout (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10,
                             check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=False)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def client_for(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
