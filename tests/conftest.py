"""Shared test settings: offline, no analytics, each test's state in its own folder.

Area fixtures live in their own test modules or in tests/<area>/conftest.py.
"""
import os

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
