"""Promote: register a candidate adapter in the MLflow registry with its lineage, then move aliases by the gates.

Aliases, never stages:
- ``challenger``: the newest registered candidate (set on registration, whatever the decision);
- ``champion``: moved only when every gate passed, the champion has not changed since the candidate was evaluated,
  and every artifact (adapter, evaluation report) is written and listed;
- ``previous``: the champion that was replaced. Invariant: ``previous`` == the champion's ``parent_champion_version``
  tag, so ``rollback`` walks back through history one release at a time.

One promotion (or rollback) at a time: a ``filelock`` under ``<state>/locks/`` held across processes. With a shared
MLflow server and several machines the state dir must be shared (or run promotions from one place).
"""
from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
_TAG_MAX = 4900  # MLflow model-version tag values are capped at 5000 characters


class Lineage(BaseModel):
    """Where a candidate came from; stored as tags on its registry version."""

    snapshot_hash: str = ""
    contract_report: str = ""
    reward_spec_hash: str = ""
    base_model: str = ""
    code_revision: str = ""
    train_run_id: str = ""


class Release(BaseModel):
    """Outcome of a promotion or rollback."""

    model_name: str
    version: int | None  # the registered (or restored) version
    decision: str  # promoted | rejected | stale | rolled_back
    reason: str
    champion_version: int | None  # champion after the operation
    previous_version: int | None
    source: str | None = None
    run_id: str | None = None


class PromotionError(RuntimeError):
    pass


def code_revision() -> str:
    """``git rev-parse HEAD`` of the checkout (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=False)
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
        raise PromotionError(f"registry lock {path} still held after {timeout_s:.0f} s (another promotion running?)") from None


def alias_version(client, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="rl-flywheel LoRA adapters; aliases champion/challenger/previous")
        except MlflowException as e:  # created by a racing process meanwhile
            if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise


def fetch_adapter(tracking_uri: str, name: str, ref: str | int, dst: str | Path) -> tuple[int, Path]:
    """Download the adapter of ``name@alias`` (or a version number) to ``dst``; returns (version, local folder)."""
    import mlflow

    client = client_for(tracking_uri)
    mv = client.get_model_version(name, str(ref)) if isinstance(ref, int) else client.get_model_version_by_alias(name, ref)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(out), tracking_uri=tracking_uri)
    return int(mv.version), Path(local)


def _artifacts_written(client, run_id: str, needed: dict[str, list[str]]) -> list[str]:
    """Names in ``needed`` ({folder: [file, ...]}) that are NOT listed in the run's artifacts."""
    missing = []
    for folder, files in needed.items():
        listed = {Path(f.path).name for f in client.list_artifacts(run_id, folder)}
        missing += [f"{folder}/{f}" for f in files if f not in listed]
    return missing


def _set_alias_order(client, name: str, version: int, parent: int | None) -> None:
    """``previous`` first, then ``champion``: a crash in between leaves previous == champion, never a lost release."""
    if parent is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(parent))
    client.set_registered_model_alias(name, CHAMPION, str(version))


def promote(
    adapter_dir: str | Path,
    *,
    tracking_uri: str,
    model_name: str,
    experiment_id: str,
    state_dir: str | Path,
    passed: bool,
    reason: str,
    evaluated_champion: int | None,
    summary: dict | None = None,
    report_files: list[str | Path] = (),
    lineage: Lineage | None = None,
    run_id: str | None = None,
    expect_logged: list[str] = (),
    lock_timeout_s: float = 600.0,
    require_fresh_evaluation: bool = True,
) -> Release:
    """Register ``adapter_dir`` as a new version (alias ``challenger``); make it ``champion`` only if ``passed``.

    ``report_files`` are logged under ``evaluation/``; ``expect_logged`` names artifacts already in ``run_id``
    (e.g. ``evaluation/report.json`` logged by the evaluate stage) that must exist before ``champion`` moves.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise PromotionError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json)")
    lineage = lineage or Lineage()
    if not lineage.code_revision:
        lineage = lineage.model_copy(update={"code_revision": code_revision()})
    client = client_for(tracking_uri)
    with registry_lock(state_dir, model_name, lock_timeout_s):
        ensure_registered_model(client, model_name)
        parent = alias_version(client, model_name, CHAMPION)
        # 1. write every artifact: adapter + evaluation report, in the evaluation run (or a new one)
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=f"promote-{adapter_dir.name}").info.run_id
        client.log_artifacts(run_id, str(adapter_dir), "adapter")
        for f in report_files:
            client.log_artifact(run_id, str(f), "evaluation")
        weights = [p.name for p in adapter_dir.iterdir() if p.suffix in (".safetensors", ".bin")]
        needed = {"adapter": ["adapter_config.json", *weights]}
        if report_files:
            needed["evaluation"] = [Path(f).name for f in report_files]
        for rel in expect_logged:
            folder, _, fname = rel.rpartition("/")
            needed.setdefault(folder or None, []).append(fname)
        missing = _artifacts_written(client, run_id, needed)
        # 2. register, lineage as tags
        tags = {**{k: str(v) for k, v in lineage.model_dump().items()},
                "parent_champion_version": "" if parent is None else str(parent),
                "evaluated_against": "" if evaluated_champion is None else str(evaluated_champion),
                "eval_summary": json.dumps(summary or {}, default=str)[:_TAG_MAX], "decision": "pending"}
        source = f"{client.get_run(run_id).info.artifact_uri}/adapter"
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
        version = int(mv.version)
        client.set_registered_model_alias(model_name, CHALLENGER, str(version))
        # 3. decide
        if not passed:
            decision, why = "rejected", reason
        elif require_fresh_evaluation and parent != evaluated_champion:
            decision = "stale"
            why = f"champion changed since evaluation (evaluated against v{evaluated_champion}, now v{parent}); re-evaluate"
        elif missing:
            decision, why = "rejected", f"artifacts not written: {', '.join(missing)}"
        else:
            decision, why = "promoted", reason
        client.set_model_version_tag(model_name, str(version), "decision", decision)
        client.set_model_version_tag(model_name, str(version), "decision_reason", why[:_TAG_MAX])
        client.set_tag(run_id, "release.decision", decision)
        if decision == "promoted":
            _set_alias_order(client, model_name, version, parent)
        return Release(model_name=model_name, version=version, decision=decision, reason=why,
                       champion_version=alias_version(client, model_name, CHAMPION),
                       previous_version=alias_version(client, model_name, PREVIOUS), source=source, run_id=run_id)


def rollback(*, tracking_uri: str, model_name: str, state_dir: str | Path, reason: str = "manual rollback",
             expected_champion: int | None = None, lock_timeout_s: float = 600.0) -> Release:
    """Make ``previous`` the champion again; ``previous`` then points at its own parent (or is removed)."""
    client = client_for(tracking_uri)
    with registry_lock(state_dir, model_name, lock_timeout_s):
        champ = alias_version(client, model_name, CHAMPION)
        prev = alias_version(client, model_name, PREVIOUS)
        if expected_champion is not None and champ != expected_champion:
            raise PromotionError(f"{model_name}: champion is v{champ}, not v{expected_champion}; rollback skipped")
        if prev is None:
            now = f"champion v{champ}" if champ is not None else "no champion either"
            raise PromotionError(f"{model_name}: no 'previous' version to roll back to ({now})")
        client.set_registered_model_alias(model_name, CHAMPION, str(prev))
        if champ is not None:
            client.set_model_version_tag(model_name, str(champ), "rolled_back",
                                         f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}"[:_TAG_MAX])
        grand = client.get_model_version(model_name, str(prev)).tags.get("parent_champion_version", "")
        if grand:
            client.set_registered_model_alias(model_name, PREVIOUS, grand)
        else:
            client.delete_registered_model_alias(model_name, PREVIOUS)
        return Release(model_name=model_name, version=prev, decision="rolled_back", reason=reason,
                       champion_version=prev, previous_version=int(grand) if grand else None)


def registry_state(tracking_uri: str, model_name: str) -> dict:
    """Aliases and versions (with decision tags) of ``model_name``, for the CLI and tests."""
    client = client_for(tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    return {
        "aliases": {a: alias_version(client, model_name, a) for a in (CHAMPION, CHALLENGER, PREVIOUS)},
        "versions": {int(v.version): {"decision": v.tags.get("decision"), "parent": v.tags.get("parent_champion_version"),
                                      "rolled_back": v.tags.get("rolled_back")} for v in versions},
    }
