"""Gateway fixtures: the stub upstream on a real uvicorn server, and a config whose state and sink are tmp dirs."""
from __future__ import annotations

import pytest
from gateway_upstream import ServerThread, StubUpstream


@pytest.fixture
def stub():
    upstream = StubUpstream()
    with ServerThread(upstream.app) as server:
        upstream.url = server.url + "/v1"
        yield upstream


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(upstream_url, **overrides)``: a FlywheelConfig with state, logs and WAL under tmp_path."""
    from flywheel.config import load_config

    def make(upstream_url: str, **overrides):
        values = {"project.state_dir": str(tmp_path / "state"), "source.uri": str(tmp_path / "logs"),
                  "gateway.upstream_url": upstream_url, "gateway.capture.max_seconds": 0.5}
        values.update(overrides)
        return load_config(None, values)

    return make
