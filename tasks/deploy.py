"""Prefect task of the deploy stage: thin wrapper of ``flywheel.serve.deploy_champion`` (retried on HTTP errors)."""
from __future__ import annotations

from typing import Any

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.serve import DeployResult
from flywheel.serve import deploy_champion as _deploy


def retry_on_http(task, task_run, state) -> bool:
    import httpx

    try:
        state.result()
    except (httpx.TransportError, ConnectionError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


@task(name="deploy_champion", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_http)
def deploy_champion(cfg: FlywheelConfig, release: Any) -> DeployResult:
    """Hot-load the registry's champion into the running vLLM server and smoke-test it; unload + roll back on
    failure. Skipped (status ``skipped``) when no server is running or nothing new was promoted."""
    if release is not None and getattr(release, "decision", "promoted") != "promoted":
        from flywheel.serve import adapter_name

        name = cfg.registry.model_name or cfg.project.name
        return DeployResult(status="skipped", endpoint="", adapter=adapter_name(name, release.version or 0),
                            serving=cfg.serve.adapter_name, version=release.version,
                            reason=f"v{release.version} was {release.decision}: nothing new to deploy")
    return _deploy(cfg)
