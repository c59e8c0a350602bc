"""Fixtures of the flow tests: Prefect's test harness (its own temporary database) and one fast demo run shared by
the tests that inspect what the nightly flow did."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def fast_demo(prefect_harness, tmp_path_factory):
    """``run_demo(--fast)``: 3 days of small logs, the day-0 champion, two nightly flows (shared, read-only)."""
    from demo.run import run_demo

    out = tmp_path_factory.mktemp("demo")
    result = run_demo(out, fast=True, seed=0)
    return out, result["report"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real ``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME; yields (api_url, env)."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    with open(tmp_path / "prefect-server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            wait_http(f"http://127.0.0.1:{port}/api/health", 120, proc)
            yield env["PREFECT_API_URL"], env
        finally:
            stop(proc)
