"""Deploy stage: hot-load the registry's champion into the running vLLM server, smoke-test it, keep or roll back.

``hot_swap`` loads version N as ``<model>-vN`` next to what is serving, sends it the golden prompts (answers graded
by the configured rule components), and only then points the stable name (``serve.adapter_name``) at it. When it is
not deployed — the server refuses to load it (a broken weights file, a rank above ``serve.max_lora_rank``, another
base), the fetched files are not the registered ones, or its smoke test fails — ``<model>-vN`` is unloaded, the stable
name keeps the previous weights (``rolled_back``), and (with ``serve.rollback_registry_on_failure``) the registry's
champion goes back to ``previous``. The server dying meanwhile is ``failed``: the same rollback, and the record says
nothing is served; the stage does not restart vLLM (``flywheel serve`` or the orchestrator does, and starts the
registry's champion: the previous one). Each outcome is tagged on the version (``deploy_status``, ``deploy_reason``).
No server running, or nothing newly promoted: the stage is ``skipped`` with a record saying why. Retried only on
transient HTTP / network errors raised before the load.

A ``canary`` release (``registry.release_mode: canary``) is loaded the same way but under the challenger's name
(``gateway.routing.challenger_model``) beside the champion, so the gateway sends it its share; a failed smoke test
unloads it and ends its canary in the registry. A night with nothing new still deploys the champion when the server
serves another version (the gateway's monitor promoted a challenger since).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.config.release import ServeConfig
from flywheel.golden_set import read_golden_set
from flywheel.records import Deployment, Release, SmokeResult
from flywheel.registry import ArtifactMismatch, PromotionError, Registry
from flywheel.retries import is_transient_io, retry_on_transient_io
from flywheel.serving import (
    AdapterRefused,
    CheckFn,
    adapter_misfits,
    adapter_name,
    is_healthy,
    load_adapter,
    read_server_info,
    served_models,
    server_url,
    smoke_test,
    unload_adapter,
    write_server_info,
)


def rule_check(cfg: FlywheelConfig) -> CheckFn | None:
    """Smoke-test grader: an answer passes when every configured rule component scores >= 0.5 (None: no rules)."""
    from flywheel.rewards.spec import build_graders, specs_of

    specs = [s for s in specs_of(cfg) if s.kind == "rule"]
    if not specs:
        return None
    graders = build_graders(specs, cfg, None)

    def check(prompts: list[list[dict]], answers: list[str]) -> list[float]:
        per = [graders[s.name](prompts, answers) for s in specs]
        return [min(col[i] for col in per) for i in range(len(answers))]

    return check


def smoke_prompts(cfg: FlywheelConfig, prompts_file: str | Path | None = None,
                  run_id: str | None = None) -> list[list[dict]]:
    """Golden prompts: ``prompts_file``, else ``evaluate.golden_set``, else the prompts the release was evaluated on
    (``evaluation/responses.jsonl`` of its run ``run_id``)."""
    path = prompts_file or cfg.evaluate.golden_set
    if path:
        return read_golden_set(path).prompts
    if run_id:
        import mlflow

        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/responses.jsonl",
                                                    tracking_uri=Registry.from_config(cfg).tracking_uri)
        return [json.loads(line)["prompt"] for line in Path(local).read_text().splitlines() if line.strip()]
    raise ValueError("deploy: no smoke-test prompts: set evaluate.golden_set or pass --prompts")


def hot_swap(url: str, model_name: str, version: int, adapter_dir: str | Path, prompts: list[list[dict]],
             check: CheckFn | None, serve: ServeConfig, on_failure: Callable[[], bool] | None = None,
             stable: str | None = None) -> Deployment:
    """Load version ``version``, smoke-test it, switch the stable name (``stable``, default ``serve.adapter_name``)
    to it, or unload it and keep the previous.

    ``on_failure`` (e.g. a registry rollback) runs when the version is not deployed: the server refused to load it,
    its smoke test failed, or the server stopped answering meanwhile (status ``failed``: nothing is served until the
    server is restarted, and ``flywheel serve`` starts the registry's champion, the previous one once rolled back).
    It returns whether it rolled back.
    """
    stable = stable or serve.adapter_name
    name = adapter_name(model_name, version)
    had_stable = False
    try:
        served = served_models(url)
        had_stable = stable in served
        load_adapter(url, name, adapter_dir, inplace=name in served)
    except (AdapterRefused, httpx.HTTPError) as e:
        return not_deployed(url, name, stable, version, None, f"loading {name} failed: {e}", had_stable, on_failure)
    smoke = smoke_test(url, name, prompts[:serve.smoke_max_prompts], check, serve.smoke_max_tokens,
                       serve.smoke_min_pass_rate)
    if smoke.passed:
        try:
            load_adapter(url, stable, adapter_dir, inplace=stable in served_models(url))
        except (AdapterRefused, httpx.HTTPError) as e:
            return not_deployed(url, name, stable, version, smoke, f"switching '{stable}' to {name} failed: {e}",
                                had_stable, on_failure)
        return Deployment(status="deployed", endpoint=url, adapter=name, serving=stable, version=version,
                          smoke=smoke, reason=f"smoke test passed ({smoke.pass_rate:.0%} of {smoke.n})")
    with contextlib.suppress(AdapterRefused, httpx.HTTPError):  # a dead server is reported below
        unload_adapter(url, name)
    why = smoke.error or f"smoke test pass rate {smoke.pass_rate:.0%} < {serve.smoke_min_pass_rate:.0%}"
    return not_deployed(url, name, stable, version, smoke, why, had_stable, on_failure)


def not_deployed(url: str, name: str, stable: str, version: int, smoke: SmokeResult | None, why: str,
                 had_stable: bool, on_failure: Callable[[], bool] | None) -> Deployment:
    """``rolled_back`` (the server answers; ``stable`` keeps what it served) or ``failed`` (the server is down)."""
    up = is_healthy(url)
    rolled = bool(on_failure()) if on_failure else False
    if up:
        keeps = f"'{stable}' keeps the previous weights" if had_stable else f"'{stable}' stays unserved"
        return Deployment(status="rolled_back", endpoint=url, adapter=name, serving=stable, version=version,
                          smoke=smoke, rolled_back_registry=rolled, reason=f"{why}; {name} not served, {keeps}")
    restart = "the registry's champion" + (", the previous one again" if rolled else f", v{version}")
    return Deployment(status="failed", endpoint=url, adapter=name, serving=stable, version=version, smoke=smoke,
                      rolled_back_registry=rolled,
                      reason=f"{why}; the vLLM server at {url} stopped answering: nothing is served until it is "
                             f"restarted (`flywheel serve` starts {restart})")


def registry_rollback(registry: Registry, version: int, why: str) -> Callable[[], bool]:
    """``on_failure`` of ``hot_swap``: move the champion from ``version`` back to ``previous`` (False if it moved
    meanwhile or there is no previous)."""
    def rollback() -> bool:
        try:
            registry.rollback(reason=why, expected_champion=version)
        except PromotionError:
            return False
        return True

    return rollback


def end_canary(registry: Registry, version: int, why: str) -> Callable[[], bool]:
    """``on_failure`` of a challenger's ``hot_swap``: remove its ``challenger`` alias (False if it moved meanwhile)."""
    return lambda: registry.withdraw_challenger(version, why)


def deploy_challenger(cfg: FlywheelConfig, registry: Registry, release: Release, url: str,
                      prompts_file: str | Path | None, check: CheckFn | None) -> Deployment:
    """Load the canary release beside the champion under ``gateway.routing.challenger_model``, smoke-tested."""
    stable, version = cfg.gateway.routing.challenger_model, release.version
    name = adapter_name(registry.model_name, version)
    if registry.version_of("challenger") != version:
        return Deployment(status="skipped", endpoint=url, adapter=name, serving=stable, version=version,
                          reason=f"v{version} is no longer the challenger: nothing to load")
    if not is_healthy(url):
        return Deployment(status="skipped", endpoint=url, adapter=name, serving=stable, version=version,
                          reason=f"no vLLM server at {url}: challenger v{version} is in the registry but not served "
                                 f"as '{stable}' (start one with `flywheel serve`)")
    on_failure = (end_canary(registry, version, f"not deployed on {url} (see its deploy_reason tag)")
                  if cfg.serve.rollback_registry_on_failure else None)
    result = fetch_and_swap(cfg, registry, version, url, smoke_prompts(cfg, prompts_file, release.run_id),
                            check, on_failure, stable)
    info = read_server_info(cfg.state)
    if result.deployed and info is not None:
        info.challenger_version = version
        write_server_info(info, cfg.state)
    if result.deployed:
        result.reason = f"canary: '{stable}' serves v{version} beside the champion; {result.reason}"
    return note_outcome(registry, result)


def fetch_and_swap(cfg: FlywheelConfig, registry: Registry, version: int, url: str, prompts: list[list[dict]],
                   check: CheckFn | None, on_failure: Callable[[], bool] | None, stable: str) -> Deployment:
    """``hot_swap`` of ``version`` fetched from the registry. Never loaded, not deployed as a refused load: a
    fetched adapter that is not the registered one (a file missing or changed in the artifact store), or one whose
    LoRA shapes do not fit the base the server runs (``<state>/serve/server.json``)."""
    name, info = adapter_name(registry.model_name, version), read_server_info(cfg.state)
    try:
        _, local = registry.fetch(version)
    except ArtifactMismatch as e:
        return not_deployed(url, name, stable, version, None, f"fetching v{version} failed: {e}",
                            stable in served_models(url), on_failure)
    misfits = adapter_misfits(local, info.base_model) if info is not None else []
    if misfits:
        return not_deployed(url, name, stable, version, None,
                            f"loading {name} failed: refused before loading, its weights do not fit the served base "
                            f"{info.base_model}: {'; '.join(misfits[:3])}", stable in served_models(url), on_failure)
    return hot_swap(url, registry.model_name, version, local, prompts, check if check is not None else rule_check(cfg),
                    cfg.serve, on_failure, stable=stable)


def note_outcome(registry: Registry, result: Deployment) -> Deployment:
    """Tag the version with the outcome (``deploy_status``/``deploy_reason``); an unreachable registry only says so."""
    try:
        registry.note_deployment(result.version, result.status, result.reason)
    except Exception as e:  # noqa: BLE001  (the server's state is what it is: do not fail the stage over a tag)
        if not is_transient_io(e):
            raise
        result.reason += f" (the registry could not be tagged: {type(e).__name__})"
    return result


@task(name="deploy_champion", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_transient_io)
def deploy_champion(cfg: FlywheelConfig, release: Release | None, *, prompts_file: str | Path | None = None,
                    check: CheckFn | None = None, url: str | None = None) -> Deployment:
    """Hot-load the registry's champion into the running server and smoke-test it; unload + roll back on failure.

    ``release``: the promote stage's record; ``canary``: loaded as the challenger instead (``deploy_challenger``);
    skipped unless it was ``promoted`` or the server serves another champion than the registry's (None: deploy
    whatever the champion is, as ``flywheel deploy`` does). Skipped too when no server answers at ``url`` (default:
    ``server_url``).
    """
    registry = Registry.from_config(cfg)
    info = read_server_info(cfg.state)
    url = url or server_url(cfg, info)
    if release is not None and release.decision == "canary":
        return deploy_challenger(cfg, registry, release, url, prompts_file, check)
    champ = registry.champion()
    behind = info is not None and champ is not None and info.champion_version not in (None, champ.version)
    if release is not None and release.decision != "promoted" and not behind:
        return Deployment(status="skipped", endpoint="", version=release.version, serving=cfg.serve.adapter_name,
                          adapter=adapter_name(registry.model_name, release.version or 0),
                          reason=f"v{release.version} was {release.decision}: nothing new to deploy")
    champ = champ or registry.require_champion()
    name = adapter_name(registry.model_name, champ.version)
    if not is_healthy(url):
        return note_outcome(registry, Deployment(
            status="skipped", endpoint=url, adapter=name, serving=cfg.serve.adapter_name, version=champ.version,
            reason=f"no vLLM server at {url}: start one with `flywheel serve` (champion v{champ.version} stays in "
                   "the registry)"))
    version = champ.version
    on_failure = (registry_rollback(registry, version, f"not deployed on {url} (see its deploy_reason tag)")
                  if cfg.serve.rollback_registry_on_failure else None)
    result = fetch_and_swap(cfg, registry, version, url, smoke_prompts(cfg, prompts_file, champ.run_id), check,
                            on_failure, cfg.serve.adapter_name)
    if result.deployed and info is not None:
        if behind and release is not None:
            result.reason = (f"the server served v{info.champion_version}, the registry's champion is v{version} "
                             f"(promoted by the canary): {result.reason}")
        info.champion_version = version
        if info.challenger_version == version:  # the canary that was promoted: no longer a challenger
            info.challenger_version = None
        write_server_info(info, cfg.state)
    return note_outcome(registry, result)
