"""Prefect task of the judge stage: a thin wrapper of ``flywheel.judge_stage`` (retries only on I/O failures)."""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from flywheel.config import FlywheelConfig
from flywheel.judge_stage import JudgeRecord, run_judge


def retry_on_io(task, task_run, state) -> bool:
    """Retry transient I/O failures (judge endpoint, network, disk, registry); never bad data, config or bugs."""
    import httpx

    from flywheel.rewards.judge import JudgeError

    try:
        state.result()
    except (httpx.TransportError, TimeoutError):
        return True
    except JudgeError as exc:  # the endpoint kept failing (5xx/429/timeouts): worth a later retry
        return "attempts" in str(exc)
    except OSError as exc:
        return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
    except Exception:  # noqa: BLE001
        return False
    return False


@task(name="judge_snapshot", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      retry_jitter_factor=0.5, retry_condition_fn=retry_on_io)
def judge_snapshot(cfg: FlywheelConfig, clean: Any) -> JudgeRecord:
    """Score the clean snapshot (rules, KPI, reward model, LLM judge) and refresh the reward model when due."""
    return run_judge(cfg, clean)
