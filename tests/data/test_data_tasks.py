"""The Prefect tasks are the stage functions; retries are for I/O errors only."""
import pytest
from prefect.states import Completed, Failed

from flywheel.config.data import SourceConfig, ValidateConfig


def test_tasks_wrap_observe_and_validate(demo_logs, state_dir):
    from tasks.observe import commit_observed, observe_logs
    from tasks.validate import validate_snapshot

    logs, summary = demo_logs
    obs = observe_logs.fn(SourceConfig(uri=str(logs)), state_dir)
    val = validate_snapshot.fn(obs, ValidateConfig(), state_dir)
    assert val.rows_in == summary.rows and commit_observed.fn(obs, state_dir) == 4
    assert val.snapshot_hash == obs.snapshot_hash
    nothing = observe_logs.fn(SourceConfig(uri=str(logs)), state_dir)
    with pytest.raises(ValueError, match="nothing to validate"):
        validate_snapshot.fn(nothing, ValidateConfig(), state_dir)


def test_retry_condition_is_io_only():
    from botocore.exceptions import EndpointConnectionError

    from flywheel.retries import retry_on_transient_io
    from tasks.observe import commit_observed, observe_logs

    assert observe_logs.retry_condition_fn is retry_on_transient_io is commit_observed.retry_condition_fn
    assert retry_on_transient_io(None, None, Failed(data=ConnectionResetError()))
    assert retry_on_transient_io(None, None, Failed(data=EndpointConnectionError(endpoint_url="http://x")))
    assert not retry_on_transient_io(None, None, Failed(data=FileNotFoundError("source.uri")))
    assert not retry_on_transient_io(None, None, Failed(data=ValueError("bad data")))
    assert not retry_on_transient_io(None, None, Completed(data=0))
