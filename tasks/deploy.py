"""Deploy stage: hot-load the registry's champion into the running vLLM server, smoke-test it, keep or roll back.

``hot_swap`` loads version N as ``<model>-vN`` next to what is serving, sends it the golden prompts (answers graded
by the configured rule components), and only then points the stable name (``serve.adapter_name``) at it. On a failed
smoke test ``<model>-vN`` is unloaded, the stable name keeps the previous weights, and (with
``serve.rollback_registry_on_failure``) the registry's champion goes back to ``previous``. No server running, or nothing
newly promoted: the stage is ``skipped`` with a record saying why. Retried only on transient HTTP / network errors.

A ``canary`` release (``registry.release_mode: canary``) is loaded the same way but under the challenger's name
(``gateway.routing.challenger_model``) beside the champion, so the gateway sends it its share; a failed smoke test
unloads it and ends its canary in the registry. A night with nothing new still deploys the champion when the server
serves another version (the gateway's monitor promoted a challenger since).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.config.release import ServeConfig
from flywheel.golden_set import read_golden_set
from flywheel.records import Deployment, Release
from flywheel.registry import PromotionError, Registry
from flywheel.retries import retry_on_transient_io
from flywheel.serving import (
    CheckFn,
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

    ``on_failure`` (e.g. a registry rollback) runs after a failed smoke test; it returns whether it rolled back.
    """
    stable = stable or serve.adapter_name
    name = adapter_name(model_name, version)
    served = served_models(url)
    load_adapter(url, name, adapter_dir, inplace=name in served)
    smoke = smoke_test(url, name, prompts[:serve.smoke_max_prompts], check, serve.smoke_max_tokens,
                       serve.smoke_min_pass_rate)
    if smoke.passed:
        load_adapter(url, stable, adapter_dir, inplace=stable in served_models(url))
        return Deployment(status="deployed", endpoint=url, adapter=name, serving=stable, version=version,
                          smoke=smoke, reason=f"smoke test passed ({smoke.pass_rate:.0%} of {smoke.n})")
    unload_adapter(url, name)
    rolled = bool(on_failure()) if on_failure else False
    why = smoke.error or f"smoke test pass rate {smoke.pass_rate:.0%} < {serve.smoke_min_pass_rate:.0%}"
    return Deployment(status="rolled_back", endpoint=url, adapter=name, serving=stable, version=version,
                      smoke=smoke, rolled_back_registry=rolled,
                      reason=f"{why}; {name} unloaded, " + (f"'{stable}' keeps the previous weights" if stable in served
                                                            else f"'{stable}' stays unserved"))


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
    _, local = registry.fetch(version)
    on_failure = (end_canary(registry, version, f"smoke test failed on {url}")
                  if cfg.serve.rollback_registry_on_failure else None)
    result = hot_swap(url, registry.model_name, version, local, smoke_prompts(cfg, prompts_file, release.run_id),
                      check if check is not None else rule_check(cfg), cfg.serve, on_failure, stable=stable)
    info = read_server_info(cfg.state)
    if result.deployed and info is not None:
        info.challenger_version = version
        write_server_info(info, cfg.state)
    if result.deployed:
        result.reason = f"canary: '{stable}' serves v{version} beside the champion; {result.reason}"
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
        return Deployment(status="skipped", endpoint=url, adapter=name, serving=cfg.serve.adapter_name,
                          version=champ.version, reason=f"no vLLM server at {url}: start one with `flywheel serve` "
                                                        f"(champion v{champ.version} stays in the registry)")
    version, local = registry.fetch(champ.version)
    on_failure = (registry_rollback(registry, version, f"smoke test failed on {url}")
                  if cfg.serve.rollback_registry_on_failure else None)
    result = hot_swap(url, registry.model_name, version, local, smoke_prompts(cfg, prompts_file, champ.run_id),
                      check if check is not None else rule_check(cfg), cfg.serve, on_failure)
    if result.deployed and info is not None:
        if behind:
            result.reason = (f"the server served v{info.champion_version}, the registry's champion is v{version} "
                             f"(promoted by the canary): {result.reason}")
        info.champion_version = version
        if info.challenger_version == version:  # the canary that was promoted: no longer a challenger
            info.challenger_version = None
        write_server_info(info, cfg.state)
    return result
