"""No accepted row is lost: the gateway as a real ``flywheel gateway`` subprocess, killed with SIGKILL, restarted,
then stopped with SIGTERM; every ``x-request-id`` it handed out is in the sink exactly once.

Upstream: the project's replay server (``flywheel/rewards/replay_server.py``), non-streaming, over real HTTP.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from gateway_upstream import free_port
from test_gateway_capture import CHAT, sink_rows

from flywheel.rewards.replay_server import ReplayServer

REPO = Path(__file__).resolve().parents[2]


def start_gateway(config: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = yaml.safe_load(config.read_text())["gateway"]["port"]
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from flywheel.cli import main; main()", "gateway",
                                 "--config", str(config)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gateway exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"gateway not healthy in 60 s: {log.read_text()[-2000:]}")


def send(url: str, n: int, workers: int = 8) -> list[str]:
    """``n`` chat calls from ``workers`` threads; the receipts of the answered ones."""
    def one(i: int) -> str:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": CHAT},
                       headers={"x-user-id": f"user-{i}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.headers["x-request-id"]

    with cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


def test_sigkill_loses_no_accepted_row_and_sigterm_flushes(tmp_path):
    from tasks.observe import observe
    from tasks.validate import validate

    logs, state = tmp_path / "logs", tmp_path / "state"
    with ReplayServer() as upstream:
        config = tmp_path / "flywheel.yaml"
        config.write_text(yaml.safe_dump({
            "project": {"state_dir": str(state)}, "source": {"uri": str(logs)},
            "gateway": {"port": free_port(), "upstream_url": upstream.base_url,
                        "capture": {"max_seconds": 3600, "max_rows": 50}}}))
        log = tmp_path / "gateway.log"

        # 1. N accepted calls, then SIGKILL: no flush, no shutdown hook
        proc, url = start_gateway(config, log)
        first = send(url, 120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        in_sink_at_kill = len(sink_rows(logs))
        wal = state / "gateway" / "wal" / "gw"
        assert in_sink_at_kill < len(first), "the kill came too late to test anything"
        assert list(wal.glob("*.open")) or list(wal.glob("*.ready")), "nothing was left in the WAL"

        # 2. restart: the WAL is replayed into the sink without any new request
        proc, url = start_gateway(config, log)
        wait_for(lambda: len(sink_rows(logs)) == len(first), 30, "the replay of the WAL")
        second = send(url, 30)

        # 3. SIGTERM: everything accepted is flushed before the process exits
        os.kill(proc.pid, signal.SIGTERM)
        # uvicorn shuts down gracefully (lifespan: flush), then re-raises the signal: exit status -15
        assert proc.wait(60) in (0, -signal.SIGTERM), log.read_text()[-2000:]
    ids = [r["request_id"] for r in sink_rows(logs)]
    assert len(ids) == len(set(ids)) == 150, f"{len(ids)} rows, {len(set(ids))} distinct"
    assert set(ids) == set(first) | set(second)
    assert not list(wal.glob("*.open")) and not list(wal.glob("*.ready"))

    from flywheel.config import load_config

    cfg = load_config(config)
    observation = observe(cfg.source, cfg.state, commit=True)
    validation = validate(observation.snapshot_uri, cfg.state, cfg.validation)
    assert (validation.rows_clean, validation.rows_quarantined) == (150, 0), validation.checks
