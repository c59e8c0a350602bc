"""The model registry: one registered model per use case in MLflow, its aliases, lineage tags and adapters.

Aliases, never stages:
- ``challenger``: the newest registered candidate (whatever the decision, unless its artifacts are incomplete); with
  ``release_mode="canary"`` only a candidate that passed, which then stays out of ``champion`` (decision ``canary``)
  until the gateway's monitor promotes or rolls it back (``flywheel/gateway/monitor.py``);
- ``champion``: moved only when every gate passed, the champion has not changed since the candidate was evaluated,
  and every artifact (adapter, evaluation report) is written and listed;
- ``previous``: the champion that was replaced. Invariant: ``previous`` == the champion's ``parent_champion_version``
  tag, so ``rollback`` walks back through history one release at a time.

Crash-safe: a version is registered with ``decision=pending`` only after its artifacts are uploaded and checked
(names and sizes; digests in the ``adapter_files`` tag, verified by ``fetch_adapter``), and the aliases move last
(``promoting`` until both moved). An MLflow server or process lost midway leaves no alias on an unfinished version;
the next promotion or rollback finishes (``promoted``) or abandons it (``abandoned``) first: ``recover_interrupted``.

One promotion (or rollback) at a time: a ``filelock`` under ``<state>/locks/`` held across processes. With a shared
MLflow server and several machines the state dir must be shared (or run promotions from one place).

Where MLflow lives (``flywheel/mlflow_store.py``): ``registry.tracking_uri`` if configured, else SQLite + a local
artifact folder under the state dir. ``Registry.from_config(cfg)`` is the one object the stages use: which model
name, which store, who is champion, fetch its adapter, release or roll back under the lock.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# re-exported: the registry's public names
from flywheel.config import redact_userinfo
from flywheel.mlflow_store import (  # noqa: F401
    ArtifactMismatch,
    PromotionError,
    RegistryUnavailable,
    alias_version,
    artifact_location,
    client_for,
    code_revision,
    ensure_experiment,
    ensure_registered_model,
    failing_step,
    fetch_adapter,
    file_digests,
    log_release_artifacts,
    now_ms,
    registry_lock,
    tracking_uri,
)
from flywheel.records import NONE, Lineage, Release, version_tag

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
_TAG_MAX = 4900  # MLflow model-version tag values are capped at 5000 characters
UNFINISHED = ("pending", "promoting")  # decision tags of a promotion that has not finished
log = logging.getLogger(__name__)


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


def _release_to_canary(client, name: str, version: int, champion: int) -> None:
    """``challenger`` <- ``version`` (the champion stays); a challenger still in its canary is superseded."""
    old = alias_version(client, name, CHALLENGER)
    if old is not None and old not in (version, champion):
        client.set_model_version_tag(name, str(old), "canary_decision", "superseded")
        client.set_model_version_tag(name, str(old), "canary_reason", f"superseded by v{version} before a decision")
        client.set_model_version_tag(name, str(old), "canary_at", now_ms())
    client.set_registered_model_alias(name, CHALLENGER, str(version))


def _set_alias_order(client, name: str, version: int, parent: int | None) -> None:
    """``previous`` first, then ``champion``: a crash in between leaves previous == champion, never a lost release
    (``recover_interrupted`` puts ``previous`` back)."""
    if parent is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(parent))
    client.set_registered_model_alias(name, CHAMPION, str(version))


def recover_interrupted(client, name: str) -> list[str]:
    """Finish or abandon what a promotion or rollback stopped midway (server or process killed) left; under the lock.

    A version still ``pending``/``promoting`` (its promotion never finished, as promotions hold the lock) is
    ``promoted`` if it is the champion already, else ``abandoned`` and loses any alias; ``previous`` == ``champion``
    (stopped between the two alias moves) is put back to the champion's parent. Returns what it did (also logged).
    """
    notes = []
    champ = alias_version(client, name, CHAMPION)
    for mv in client.search_model_versions(f"name='{name}'"):
        was = mv.tags.get("decision")
        if was not in UNFINISHED:
            continue
        if int(mv.version) == champ:  # stopped after the champion moved: finish (challenger last, as promote does)
            client.set_registered_model_alias(name, CHALLENGER, mv.version)
            client.set_model_version_tag(name, mv.version, "decision", "promoted")
            notes.append(f"v{mv.version} was champion already: decision '{was}' completed as 'promoted'")
            continue
        for alias in (CHALLENGER, PREVIOUS):
            if alias_version(client, name, alias) == int(mv.version):
                client.delete_registered_model_alias(name, alias)
        client.set_model_version_tag(name, mv.version, "decision", "abandoned")
        client.set_model_version_tag(name, mv.version, "decision_reason",
                                     f"its promotion stopped midway (decision was '{was}'); abandoned by the next "
                                     f"promotion or rollback at {now_ms()}, never aliased")
        notes.append(f"v{mv.version}: promotion stopped midway ('{was}'): abandoned, no alias")
    if champ is not None and alias_version(client, name, PREVIOUS) == champ:
        grand = client.get_model_version(name, str(champ)).tags.get("parent_champion_version", NONE)
        if grand in ("", NONE):
            client.delete_registered_model_alias(name, PREVIOUS)
        else:
            client.set_registered_model_alias(name, PREVIOUS, grand)
        notes.append(f"'previous' named the champion v{champ}: put back to its parent ({grand})")
    for note in notes:
        log.warning("registry %s: %s", name, note)
    return notes


def _registered_before(client, name: str, run_id: str | None, files: str, notes: list[str]) -> Release | None:
    """The Release of the version this very promotion (same evaluation run, same adapter files) registered and
    decided already: a retry after its result was lost, or after MLflow failed once the aliases had moved."""
    for mv in client.search_model_versions(f"name='{name}'") if run_id else ():
        decision = mv.tags.get("decision")
        if mv.run_id != run_id or decision in (*UNFINISHED, "abandoned") or mv.tags.get("adapter_files") != files:
            continue
        done = f"; first recovered: {'; '.join(notes)}" if notes else ""
        return Release(model_name=name, version=int(mv.version), decision=decision,
                       reason=f"{mv.tags.get('decision_reason', '')} (v{mv.version} was registered and decided by an "
                              f"earlier attempt of this promotion: not registered again{done})",
                       champion_version=alias_version(client, name, CHAMPION),
                       previous_version=alias_version(client, name, PREVIOUS), source=mv.source, run_id=mv.run_id,
                       lineage=Lineage(**{k: mv.tags[k] for k in Lineage.model_fields if k in mv.tags}))
    return None


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
    A version whose artifacts are not all there whole gets no alias. MLflow failing midway: ``RegistryUnavailable``.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise PromotionError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json)")
    if release_mode not in ("all", "canary"):
        raise PromotionError(f"registry.release_mode: must be 'all' or 'canary', got {release_mode!r}")
    lineage = lineage or Lineage()
    if lineage.code_revision in ("", NONE):
        lineage = lineage.model_copy(update={"code_revision": code_revision()})
    client, digests = client_for(tracking_uri), file_digests(adapter_dir)
    with registry_lock(state_dir, model_name, lock_timeout_s), \
            failing_step(tracking_uri, model_name, "promotion") as step:
        ensure_registered_model(client, model_name)
        recovered = recover_interrupted(client, model_name)
        done = _registered_before(client, model_name, run_id, json.dumps(digests), recovered)
        if done is not None:  # a retry of a promotion that got as far as deciding: never a second version
            return done
        parent = alias_version(client, model_name, CHAMPION)
        # the parent is the champion read under the lock, whatever the caller's lineage said
        lineage = lineage.model_copy(update={"parent_champion_version": version_tag(parent)})
        step("uploading the adapter and reports")  # 1. every artifact, in the evaluation run (or a new one)
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=f"promote-{adapter_dir.name}").info.run_id
        missing = log_release_artifacts(client, run_id, adapter_dir, digests, list(report_files), list(expect_logged))
        step("registering the version")  # 2. register, lineage as tags, decision "pending" until decided
        files = json.dumps(digests)
        tags = {**lineage.tags(), "evaluated_against": version_tag(evaluated_champion),
                "eval_summary": json.dumps(summary or {}, default=str)[:_TAG_MAX], "decision": "pending",
                **({"adapter_files": files} if len(files) <= _TAG_MAX else {})}
        source = f"{client.get_run(run_id).info.artifact_uri}/adapter"
        version = int(client.create_model_version(model_name, source=source, run_id=run_id, tags=tags).version)
        step(f"deciding v{version}")  # 3. decide and tag; the aliases last, never on a pending version
        canary = release_mode == "canary" and parent is not None
        decision, why = _decide(passed, reason, evaluated_champion, parent, missing, require_fresh_evaluation)
        if canary and decision == "promoted":
            decision, why = "canary", (f"released to canary: v{version} is challenger, champion v{parent} stays; "
                                       f"the gateway's monitor promotes or rolls it back on live KPIs ({why})")
        tag = "promoting" if decision == "promoted" else decision  # "promoted" once both aliases moved
        client.set_model_version_tag(model_name, str(version), "decision_reason", why[:_TAG_MAX])
        client.set_model_version_tag(model_name, str(version), "decision", tag)
        client.set_tag(run_id, "release.decision", decision)
        step(f"moving the aliases to v{version}")
        if decision == "canary":
            _release_to_canary(client, model_name, version, parent)
        elif decision == "promoted":  # no alias before champion: a crash before it leaves the version unaliased
            _set_alias_order(client, model_name, version, parent)
            client.set_registered_model_alias(model_name, CHALLENGER, str(version))
            client.set_model_version_tag(model_name, str(version), "decision", decision)
        elif not canary and not missing:
            client.set_registered_model_alias(model_name, CHALLENGER, str(version))
        step("reading the aliases back")
        why = why + (f" (first recovered: {'; '.join(recovered)})" if recovered else "")
        return Release(model_name=model_name, version=version, decision=decision, reason=why,
                       champion_version=alias_version(client, model_name, CHAMPION),
                       previous_version=alias_version(client, model_name, PREVIOUS), source=source, run_id=run_id,
                       lineage=lineage)


def rollback(*, tracking_uri: str, model_name: str, state_dir: str | Path, reason: str = "manual rollback",
             expected_champion: int | None = None, lock_timeout_s: float = 600.0) -> Release:
    """Make ``previous`` the champion again; ``previous`` then points at its own parent (or is removed)."""
    client = client_for(tracking_uri)
    with registry_lock(state_dir, model_name, lock_timeout_s), failing_step(tracking_uri, model_name, "rollback"):
        recover_interrupted(client, model_name)
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
        client.set_model_version_tag(model_name, str(version), "canary_at", now_ms())
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
                                      "canary": v.tags.get("canary_decision"),
                                      "deploy": v.tags.get("deploy_status")} for v in versions},
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
            where = redact_userinfo(self.tracking_uri)
            raise ValueError(f"registry {self.model_name!r} at {where} has no champion yet: "
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

    def note_deployment(self, version: int, status: str, reason: str) -> None:
        """Record on ``version`` what the deploy stage did with it (``deploy_status``: deployed | rolled_back |
        failed | skipped, ``deploy_reason``, ``deploy_at``), so the registry says what serves and what never did."""
        for key, value in (("deploy_status", status), ("deploy_reason", reason), ("deploy_at", now_ms())):
            self.client.set_model_version_tag(self.model_name, str(version), key, value[:_TAG_MAX])

    def withdraw_challenger(self, version: int, reason: str) -> bool:
        return withdraw_challenger(tracking_uri=self.tracking_uri, model_name=self.model_name,
                                   state_dir=self.state_dir, version=version, reason=reason,
                                   lock_timeout_s=self.lock_timeout_s)

    def rollback(self, reason: str = "manual rollback", expected_champion: int | None = None) -> Release:
        return rollback(tracking_uri=self.tracking_uri, model_name=self.model_name, state_dir=self.state_dir,
                        reason=reason, expected_champion=expected_champion, lock_timeout_s=self.lock_timeout_s)

    def state(self) -> dict:
        return registry_state(self.tracking_uri, self.model_name)
