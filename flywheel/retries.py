"""Which failures are worth a retry: transient I/O (network, S3, an HTTP endpoint, the registry), never bad data,
bad config or a bug. A plain predicate over an exception, and the stages' Prefect ``retry_condition_fn`` built on it."""
from __future__ import annotations


def is_transient_io(exc: BaseException) -> bool:
    """Network, disk and cloud-SDK errors that a later attempt may not hit (a missing file or a denied one will)."""
    import httpx

    if isinstance(getattr(exc, "transient", None), bool):  # the error knows (flywheel.sources.SourceError, JudgeError)
        return exc.transient
    if isinstance(exc, (httpx.TransportError, TimeoutError)):
        return True
    if isinstance(exc, OSError):  # ConnectionError is an OSError
        return not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
    module = type(exc).__module__
    return module.startswith(("botocore", "boto3", "urllib3", "requests")) or "Max retries exceeded" in str(exc)


def retry_on_transient_io(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry when the failed ``state`` holds a transient I/O error."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified below
        return is_transient_io(exc)
    return False
