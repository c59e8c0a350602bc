"""Shared test settings: offline, no analytics, each test's state in its own folder.

Area fixtures live in their own test modules or in tests/<area>/conftest.py.
"""
import os
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
