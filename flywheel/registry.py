"""The model registry: one registered model per use case in MLflow, its aliases, lineage tags and adapters.

Aliases, never stages:
- ``challenger``: the newest registered candidate (set on registration, whatever the decision); with
  ``release_mode="canary"`` only a candidate that passed, which then stays out of ``champion`` (decision ``canary``)
  until the gateway's monitor promotes or rolls it back (``flywheel/gateway/monitor.py``);
- ``champion``: moved only when every gate passed, the champion has not changed since the candidate was evaluated,
  and every artifact (adapter, evaluation report) is written and listed;
- ``previous``: the champion that was replaced. Invariant: ``previous`` == the champion's ``parent_champion_version``
  tag, so ``rollback`` walks back through history one release at a time.

One promotion (or rollback) at a time: a ``filelock`` under ``<state>/locks/`` held across processes. With a shared
MLflow server and several machines the state dir must be shared (or run promotions from one place).

Where MLflow lives (``flywheel/mlflow_store.py``): ``registry.tracking_uri`` if configured, else SQLite + a local
artifact folder under the state dir. ``Registry.from_config(cfg)`` is the one object the stages use: which model
name, which store, who is champion, fetch its adapter, release or roll back under the lock.
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# re-exported: the registry's public names
from flywheel.mlflow_store import artifact_location, client_for, code_revision, ensure_experiment, tracking_uri  # noqa: F401
from flywheel.records import NONE, Lineage, Release, version_tag

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
_TAG_MAX = 4900  # MLflow model-version tag values are capped at 5000 characters


class PromotionError(RuntimeError):
    pass


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
    except MlflowException:
        return None


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="rl-flywheel LoRA adapters; aliases champion/challenger/previous")
        except MlflowException as e:  # created by a racing process meanwhile
            if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise


def fetch_adapter(tracking_uri: str, name: str, ref: str | int, dst: str | Path) -> tuple[int, Path]:
    """Download the adapter of ``name@alias`` (or a version number) to ``dst``; returns (version, local folder)."""
    import mlflow

    client = client_for(tracking_uri)
    if isinstance(ref, int):
        mv = client.get_model_version(name, str(ref))
    else:
        mv = client.get_model_version_by_alias(name, ref)
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


def _log_artifacts(client, run_id: str, adapter_dir: Path, report_files: list[str | Path],
                   expect_logged: list[str]) -> list[str]:
    """Log the adapter (``adapter/``) and reports (``evaluation/``) in the run; returns what is still not listed."""
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
    return _artifacts_written(client, run_id, needed)


def _decide(passed: bool, reason: str, evaluated_champion: int | None, champion: int | None, missing: list[str],
            require_fresh_evaluation: bool) -> tuple[str, str]:
    """(decision, reason): rejected (gates failed or artifacts missing), stale (champion moved meanwhile), promoted."""
    if not passed:
        return "rejected", reason
    if require_fresh_evaluation and champion != evaluated_champion:
        return "stale", (f"champion changed since evaluation (evaluated against v{evaluated_champion}, "
                         f"now v{champion}); re-evaluate")
    if missing:
        return "rejected", f"artifacts not written: {', '.join(missing)}"
    return "promoted", reason


def _now_ms() -> str:
    """UTC now as ``2026-11-25T14:03:22.123Z`` (the gateway's decision timestamps, so they sort together)."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _release_to_canary(client, name: str, version: int, champion: int, reason: str) -> str:
    """``challenger`` <- ``version`` (the champion stays); a challenger still in its canary is superseded."""
    old = alias_version(client, name, CHALLENGER)
    if old is not None and old not in (version, champion):
        client.set_model_version_tag(name, str(old), "canary_decision", "superseded")
        client.set_model_version_tag(name, str(old), "canary_reason", f"superseded by v{version} before a decision")
        client.set_model_version_tag(name, str(old), "canary_at", _now_ms())
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    return (f"released to canary: v{version} is challenger, champion v{champion} stays; the gateway's monitor "
            f"promotes or rolls it back on live KPIs ({reason})")


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
    release_mode: str = "all",
) -> Release:
    """Register ``adapter_dir`` as a new version (alias ``challenger``); make it ``champion`` only if ``passed``.

    ``release_mode="canary"``: a version that passed gets ``challenger`` only (decision ``canary``), one that did not
    gets no alias; with no champion yet it is promoted (a canary needs a champion to compare with).
    ``report_files`` are logged under ``evaluation/``; ``expect_logged`` names artifacts already in ``run_id``
    (e.g. ``evaluation/report.json`` logged by the evaluate stage) that must exist before ``champion`` moves.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise PromotionError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json)")
    if release_mode not in ("all", "canary"):
        raise PromotionError(f"registry.release_mode: must be 'all' or 'canary', got {release_mode!r}")
    lineage = lineage or Lineage()
    if lineage.code_revision in ("", NONE):
        lineage = lineage.model_copy(update={"code_revision": code_revision()})
    client = client_for(tracking_uri)
    with registry_lock(state_dir, model_name, lock_timeout_s):
        ensure_registered_model(client, model_name)
        parent = alias_version(client, model_name, CHAMPION)
        # the parent is the champion read under the lock, whatever the caller's lineage said
        lineage = lineage.model_copy(update={"parent_champion_version": version_tag(parent)})
        # 1. write every artifact: adapter + evaluation report, in the evaluation run (or a new one)
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=f"promote-{adapter_dir.name}").info.run_id
        missing = _log_artifacts(client, run_id, adapter_dir, list(report_files), list(expect_logged))
        # 2. register, lineage as tags
        tags = {**lineage.tags(), "evaluated_against": version_tag(evaluated_champion),
                "eval_summary": json.dumps(summary or {}, default=str)[:_TAG_MAX], "decision": "pending"}
        source = f"{client.get_run(run_id).info.artifact_uri}/adapter"
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
        version = int(mv.version)
        canary = release_mode == "canary" and parent is not None
        if not canary:
            client.set_registered_model_alias(model_name, CHALLENGER, str(version))
        # 3. decide
        decision, why = _decide(passed, reason, evaluated_champion, parent, missing, require_fresh_evaluation)
        if canary and decision == "promoted":
            decision, why = "canary", _release_to_canary(client, model_name, version, parent, why)
        client.set_model_version_tag(model_name, str(version), "decision", decision)
        client.set_model_version_tag(model_name, str(version), "decision_reason", why[:_TAG_MAX])
        client.set_tag(run_id, "release.decision", decision)
        if decision == "promoted":
            _set_alias_order(client, model_name, version, parent)
        return Release(model_name=model_name, version=version, decision=decision, reason=why,
                       champion_version=alias_version(client, model_name, CHAMPION),
                       previous_version=alias_version(client, model_name, PREVIOUS), source=source, run_id=run_id,
                       lineage=lineage)


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
        grand = client.get_model_version(model_name, str(prev)).tags.get("parent_champion_version", NONE)
        grand = "" if grand == NONE else grand
        if grand:
            client.set_registered_model_alias(model_name, PREVIOUS, grand)
        else:
            client.delete_registered_model_alias(model_name, PREVIOUS)
        return Release(model_name=model_name, version=prev, decision="rolled_back", reason=reason,
                       champion_version=prev, previous_version=int(grand) if grand else None)


def withdraw_challenger(*, tracking_uri: str, model_name: str, state_dir: str | Path, version: int, reason: str,
                        lock_timeout_s: float = 600.0) -> bool:
    """End ``version``'s canary (the ``challenger`` alias removed, ``canary_decision=rolled_back``); False when the
    challenger is no longer ``version``."""
    client = client_for(tracking_uri)
    with registry_lock(state_dir, model_name, lock_timeout_s):
        if alias_version(client, model_name, CHALLENGER) != version:
            return False
        client.delete_registered_model_alias(model_name, CHALLENGER)
        client.set_model_version_tag(model_name, str(version), "canary_decision", "rolled_back")
        client.set_model_version_tag(model_name, str(version), "canary_reason", reason[:_TAG_MAX])
        client.set_model_version_tag(model_name, str(version), "canary_at", _now_ms())
    return True


def registry_state(tracking_uri: str, model_name: str) -> dict:
    """Aliases and versions (with decision tags) of ``model_name``, for the CLI and tests."""
    client = client_for(tracking_uri)
    versions = client.search_model_versions(f"name='{model_name}'")
    return {
        "aliases": {a: alias_version(client, model_name, a) for a in (CHAMPION, CHALLENGER, PREVIOUS)},
        "versions": {int(v.version): {"decision": v.tags.get("decision"),
                                      "parent": v.tags.get("parent_champion_version"),
                                      "rolled_back": v.tags.get("rolled_back"),
                                      "canary": v.tags.get("canary_decision")} for v in versions},
    }


# ---------------------------------------------------------------------------------------------------- one object
@dataclass
class Champion:
    """The registry's champion: its version, lineage tags, the base model it was trained on, where its adapter is."""

    version: int
    tags: dict[str, str]
    base_model: str | None  # the ``base_model`` lineage tag (None on versions registered without one)
    source: str | None = None  # artifact URI of the adapter folder
    run_id: str | None = None  # the run that logged it (the evaluation run for a nightly candidate)


@dataclass
class Registry:
    """One registered model in one MLflow store: who is champion, fetch adapters, release and roll back."""

    tracking_uri: str
    model_name: str
    state_dir: Path
    experiment_name: str
    lock_timeout_s: float = 600.0
    require_fresh_evaluation: bool = True
    release_mode: str = "all"  # all | canary (registry.release_mode)
    artifact_root: str | None = None  # experiments created here get this artifact location (embedded store only)
    _client: object = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: FlywheelConfig) -> Registry:
        configured = cfg.registry.tracking_uri
        return cls(tracking_uri=tracking_uri(cfg.state, configured),
                   model_name=cfg.registry.model_name or cfg.project.name, state_dir=Path(cfg.state),
                   experiment_name=cfg.project.name, lock_timeout_s=cfg.registry.lock_timeout_s,
                   require_fresh_evaluation=cfg.registry.require_fresh_evaluation,
                   release_mode=cfg.registry.release_mode,
                   artifact_root=None if configured else artifact_location(cfg.state))

    @classmethod
    def for_agent(cls, cfg: FlywheelConfig) -> Registry:
        """The registered model of the project's agent: ``<model name>-agent`` in the same store."""
        registry = cls.from_config(cfg)
        return dataclasses.replace(registry, model_name=f"{registry.model_name}-agent", release_mode="all")

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        """Id of the project's experiment (created on first use); also points ``mlflow`` at this store."""
        configured = None if self.artifact_root else self.tracking_uri  # embedded store: local artifact root
        return ensure_experiment(self.experiment_name, self.state_dir, configured)

    def version_of(self, alias: str) -> int | None:
        return alias_version(self.client, self.model_name, alias)

    def tags(self, version: int) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, str(version)).tags)

    def champion(self) -> Champion | None:
        """The current champion, or None before day 0."""
        version = self.version_of(CHAMPION)
        if version is None:
            return None
        mv = self.client.get_model_version(self.model_name, str(version))
        tags = dict(mv.tags)
        base = tags.get("base_model")
        return Champion(version=version, tags=tags, base_model=None if base in (None, "", NONE) else base,
                        source=mv.source, run_id=mv.run_id or None)

    def require_champion(self) -> Champion:
        champ = self.champion()
        if champ is None:
            raise ValueError(f"registry {self.model_name!r} at {self.tracking_uri} has no champion yet: "
                             "run the flow or `flywheel promote` first")
        return champ

    def fetch(self, ref: str | int, dst: str | Path | None = None) -> tuple[int, Path]:
        """Download the adapter of an alias or version (default folder ``<state>/models/registry/<name>-v<N>``)."""
        if dst is None:
            version = ref if isinstance(ref, int) else self.version_of(ref)
            if version is None:
                raise ValueError(f"registry {self.model_name!r}: no version has alias {ref!r}")
            dst, ref = self.state_dir / "models" / "registry" / f"{self.model_name}-v{version}", version
        return fetch_adapter(self.tracking_uri, self.model_name, ref, dst)

    def release(self, adapter_dir: str | Path, *, passed: bool, reason: str, evaluated_champion: int | None,
                lineage: Lineage, summary: dict | None = None, run_id: str | None = None,
                expect_logged: list[str] = (), report_files: list[str | Path] = (),
                require_fresh_evaluation: bool | None = None, release_mode: str | None = None) -> Release:
        """Register ``adapter_dir`` with its lineage (alias ``challenger``); ``champion`` moves only if it passed
        (``release_mode`` canary: it becomes ``challenger`` only)."""
        fresh = self.require_fresh_evaluation if require_fresh_evaluation is None else require_fresh_evaluation
        return promote(adapter_dir, tracking_uri=self.tracking_uri, model_name=self.model_name,
                       experiment_id=self.experiment_id(), state_dir=self.state_dir, passed=passed, reason=reason,
                       evaluated_champion=evaluated_champion, summary=summary, report_files=report_files,
                       lineage=lineage, run_id=run_id, expect_logged=expect_logged, lock_timeout_s=self.lock_timeout_s,
                       require_fresh_evaluation=fresh, release_mode=release_mode or self.release_mode)

    def withdraw_challenger(self, version: int, reason: str) -> bool:
        return withdraw_challenger(tracking_uri=self.tracking_uri, model_name=self.model_name,
                                   state_dir=self.state_dir, version=version, reason=reason,
                                   lock_timeout_s=self.lock_timeout_s)

    def rollback(self, reason: str = "manual rollback", expected_champion: int | None = None) -> Release:
        return rollback(tracking_uri=self.tracking_uri, model_name=self.model_name, state_dir=self.state_dir,
                        reason=reason, expected_champion=expected_champion, lock_timeout_s=self.lock_timeout_s)

    def state(self) -> dict:
        return registry_state(self.tracking_uri, self.model_name)
