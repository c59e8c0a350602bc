"""Prefect tasks of the observe stage: thin wrappers of ``flywheel.observe`` (retries with backoff on I/O only)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config.data import SourceConfig
from flywheel.observe import Observation, commit_manifest, observe


def retry_on_io(task, task_run, state) -> bool:
    """Retry only transient I/O failures (S3, network, disk), never bad data or bugs."""
    try:
        state.result()
    except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
        return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
    except Exception as exc:  # noqa: BLE001
        return type(exc).__module__.startswith(("botocore", "boto3", "urllib3"))
    return False


@task(name="observe_logs", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_io, task_run_name="observe-{source.uri}")
def observe_logs(source: SourceConfig, state_dir: str | Path) -> Observation:
    """Read the new log objects of ``source`` into a raw snapshot (manifest committed later by ``commit_observed``)."""
    return observe(source, state_dir, commit=False)


@task(name="commit_observed", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_io)
def commit_observed(observation: Observation, state_dir: str | Path) -> int:
    """Mark the observed objects as processed, once their snapshot passed validation."""
    return commit_manifest(observation, state_dir)
