"""Fixtures of the data-plane tests: small demo logs, and a real moto S3 server over HTTP on 127.0.0.1."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.support_triage import generate_logs


@pytest.fixture(scope="session")
def demo_logs(tmp_path_factory) -> tuple[Path, object]:
    """2 days x 600 lines, 15 % defects (every kind present), fixed dates. Read-only: copy before changing."""
    out = tmp_path_factory.mktemp("demo") / "logs"
    summary = generate_logs(out, days=2, rows_per_day=600, seed=7, defect_rate=0.15, start_date="2026-11-01")
    return out, summary


@pytest.fixture
def logs_copy(demo_logs, tmp_path) -> Path:
    dst = tmp_path / "logs"
    shutil.copytree(demo_logs[0], dst)
    return dst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """``moto_server`` as a subprocess speaking the S3 HTTP API; stopped at the end of the session."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto_server exited at start") from None
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start in 30 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials through the standard chain (environment variables)."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
