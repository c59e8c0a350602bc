"""Shared test settings: offline, no analytics, each test's state in its own folder.

Area fixtures live in their own test modules or in tests/<area>/conftest.py; the moto S3 server and the dummy AWS
credentials are here, as two areas (data, gateway) use them.
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402


@pytest.fixture
def state_dir(tmp_path):
    """A fresh state folder (manifests, snapshots, MLflow store) for one test."""
    path = tmp_path / "state"
    path.mkdir()
    return path


VLLM_PY = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vllm`` run a real vLLM server from ``.venv-vllm``; without it they are skipped, saying how to
    build it."""
    if VLLM_PY.exists():
        return
    skip = pytest.mark.skip(reason=".venv-vllm is absent: build it with `make vllm-env` (make test does)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_api_command() -> list[str]:
    """The command that starts vLLM's OpenAI-compatible server from ``.venv-vllm`` (tests marked ``vllm``)."""
    return [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server"]


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
