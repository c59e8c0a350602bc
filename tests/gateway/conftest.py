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


@pytest.fixture(scope="session")
def moto_endpoint():
    """``moto_server`` as a subprocess speaking the S3 HTTP API (as in tests/data); stopped at the end."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def aws_env(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
