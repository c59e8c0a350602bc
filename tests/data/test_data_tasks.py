"""The Prefect task wrappers call the plain stage functions; retries are for I/O errors only."""
import pytest

from flywheel.config.data import SourceConfig, ValidateConfig


def test_tasks_wrap_observe_and_validate(demo_logs, state_dir):
    from tasks.observe import commit_observed, observe_logs
    from tasks.validate import validate_snapshot

    logs, summary = demo_logs
    obs = observe_logs.fn(SourceConfig(uri=str(logs)), state_dir)
    val = validate_snapshot.fn(obs, ValidateConfig(), state_dir)
    assert val.rows_in == summary.rows and commit_observed.fn(obs, state_dir) == 4
    nothing = observe_logs.fn(SourceConfig(uri=str(logs)), state_dir)
    with pytest.raises(ValueError, match="nothing to validate"):
        validate_snapshot.fn(nothing, ValidateConfig(), state_dir)


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_retry_condition_is_io_only():
    from botocore.exceptions import EndpointConnectionError

    from tasks.observe import retry_on_io

    assert retry_on_io(None, None, _State(ConnectionResetError()))
    assert retry_on_io(None, None, _State(EndpointConnectionError(endpoint_url="http://x")))
    assert not retry_on_io(None, None, _State(FileNotFoundError("source.uri")))
    assert not retry_on_io(None, None, _State(ValueError("bad data")))
