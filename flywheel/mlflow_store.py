"""Where MLflow lives for a state dir: the tracking URI (SQLite under the state dir unless configured), the artifact
root, the experiment, a client, and the code revision that lineage tags record; the registry's building blocks
(its lock, alias look-ups that tell "absent" from "unreachable", release artifacts logged, checked and fetched)."""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

from flywheel.retries import is_transient_io


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


def is_absent(exc: BaseException) -> bool:
    """An MLflow answer "no such model / alias / version" (not an unreachable or failing server)."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# ---------------------------------------------------------------------------------------------------- artifacts
class ArtifactMismatch(ValueError):
    """A registered version's files in the artifact store are not the ones it was registered with."""


def file_digests(folder: str | Path) -> dict[str, list]:
    """``{file name: [size, sha256]}`` of the files directly in ``folder`` (an adapter folder is flat)."""
    import hashlib

    out = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[p.name] = [p.stat().st_size, h.hexdigest()]
    return out


def artifacts_missing(client, run_id: str, needed: dict[str | None, dict[str, int | None]]) -> list[str]:
    """Files of ``needed`` ({folder: {file: size or None}}) the run does not list, or lists with another size."""
    missing = []
    for folder, files in needed.items():
        listed = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, folder)}
        for name, size in files.items():
            rel = f"{folder}/{name}" if folder else name
            if name not in listed:
                missing.append(rel)
            elif size is not None and listed[name] != size:
                missing.append(f"{rel} ({listed[name]} of {size} bytes)")
    return missing


def log_release_artifacts(client, run_id: str, adapter_dir: Path, digests: dict[str, list],
                          report_files: list[str | Path], expect_logged: list[str]) -> list[str]:
    """Log the adapter (``adapter/``) and reports (``evaluation/``) in the run; returns what is not there whole
    (absent, or another size than the local file)."""
    client.log_artifacts(run_id, str(adapter_dir), "adapter")
    for f in report_files:
        client.log_artifact(run_id, str(f), "evaluation")
    needed: dict[str | None, dict[str, int | None]] = {"adapter": {n: size for n, (size, _) in digests.items()}}
    if report_files:
        needed["evaluation"] = {Path(f).name: Path(f).stat().st_size for f in report_files}
    for rel in expect_logged:
        folder, _, fname = rel.rpartition("/")
        needed.setdefault(folder or None, {}).setdefault(fname, None)
    return artifacts_missing(client, run_id, needed)


def fetch_adapter(tracking_uri: str, name: str, ref: str | int, dst: str | Path) -> tuple[int, Path]:
    """Download the adapter of ``name@alias`` (or a version number) to ``dst``; returns (version, local folder).

    A version registered with its files' digests (tag ``adapter_files``) is checked against them: a file missing,
    cut short or changed in the artifact store raises ``ArtifactMismatch`` naming it."""
    import json

    import mlflow

    client = client_for(tracking_uri)
    if isinstance(ref, int):
        mv = client.get_model_version(name, str(ref))
    else:
        mv = client.get_model_version_by_alias(name, ref)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(out),
                                                     tracking_uri=tracking_uri))
    expected = json.loads(mv.tags.get("adapter_files") or "{}")
    got = file_digests(local) if expected else {}
    bad = [f"{n} ({'missing' if n not in got else 'size/sha256 differ'})" for n, d in expected.items()
           if got.get(n) != d]
    if bad:
        raise ArtifactMismatch(f"{name} v{mv.version}: the adapter in the artifact store ({mv.source}) is not the one "
                         f"registered: {', '.join(bad)}")
    return int(mv.version), local


# ---------------------------------------------------------------------------------------------------- registry
class PromotionError(RuntimeError):
    pass


class RegistryUnavailable(PromotionError, ConnectionError):
    """The MLflow server failed or went away in the middle of a promotion (transient: a retry may pass)."""


def now_ms() -> str:
    """UTC now as ``2026-11-25T14:03:22.123Z`` (the gateway's decision timestamps, so they sort together)."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def registry_lock(state_dir: str | Path, model_name: str, timeout_s: float = 600.0):
    """Cross-process lock serialising promotions and rollbacks of one registered model."""
    from filelock import FileLock, Timeout

    path = Path(state_dir) / "locks" / f"registry-{model_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        with lock:
            yield
    except Timeout:
        raise PromotionError(f"registry lock {path} still held after {timeout_s:.0f} s "
                             "(another promotion running?)") from None


def alias_version(client, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as e:  # an unreachable server is not "no such alias"
        if is_absent(e):
            return None
        raise


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if not is_absent(e):
            raise
        try:
            client.create_registered_model(
                name, description="rl-flywheel LoRA adapters; aliases champion/challenger/previous")
        except MlflowException as e:  # created by a racing process meanwhile
            if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise


@contextmanager
def failing_step(tracking_uri: str, model_name: str, what: str):
    """Yields ``step(text)`` to name the step running; an I/O failure of MLflow becomes ``RegistryUnavailable``
    naming that step (still transient, so the stage's retry reruns the whole promotion)."""
    steps = ["reading the registry"]
    try:
        yield steps.append
    except PromotionError:
        raise
    except Exception as e:
        if not is_transient_io(e):
            raise
        from flywheel.config import redact_userinfo

        cause = redact_userinfo((str(e).strip().splitlines() or [type(e).__name__])[0][:300])
        raise RegistryUnavailable(  # not chained: MLflow's error (and its traceback in the logs) quotes the full URI
            f"{what} of {model_name!r} stopped: MLflow at {redact_userinfo(tracking_uri)} failed while {steps[-1]} "
            f"({type(e).__name__}: {cause}). Aliases move only after every artifact is checked, so none names an "
            "unfinished version; rerun it: the next promotion completes or abandons this one") from None
