"""Fixtures of the data-plane tests: small demo logs (the moto S3 server and AWS env are in tests/conftest.py)."""
from __future__ import annotations

import shutil
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
