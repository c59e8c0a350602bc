"""`prefect deploy` of deployments/prefect.yaml against a real local Prefect server, a worker running the triggered
night, and `flywheel schedule` serving the flow on its cron — all checked through Prefect's REST API."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow
FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
REPO = Path(__file__).resolve().parents[2]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(tmp: Path, tz: str) -> Path:
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    cfg = {"project": {"state_dir": str(tmp / "state")}, "source": {"uri": str(tmp / "logs")},
           "schedule": {"cron": "0 2 * * *", "timezone": tz}}
    path = tmp / "flywheel.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _deployments(api: str) -> list[dict]:
    return httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()


def _wait(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(what)


def test_flows_prefect_deploy_schedules_the_night_and_a_triggered_run_completes(prefect_server, tmp_path):
    api, env = prefect_server
    config = _config(tmp_path, "Europe/Paris")
    done = subprocess.run([FLYWHEEL, "schedule", "--deploy", "--config", str(config), "--pool", "flywheel-test"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    [dep] = [d for d in _deployments(api) if d["name"] == "nightly"]
    [sched] = dep["schedules"]
    assert sched["schedule"]["cron"] == "0 2 * * *" and sched["schedule"]["timezone"] == "Europe/Paris"
    assert sched["active"] is True
    assert dep["work_pool_name"] == "flywheel-test"
    assert dep["parameters"]["config_path"] == str(config.resolve())

    run = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run",
                     json={"parameters": {"day": "2026-01-02"}}, timeout=10).json()
    assert "id" in run, run
    with open(tmp_path / "worker.log", "w") as log:  # the worker keeps its own copy of the descriptor
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "flywheel-test",
                                   "--type", "process"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        def finished():
            fr = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
            return fr if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
        fr = _wait(finished, 240, "the triggered flow run did not finish")
    finally:
        stop(worker)
    assert fr["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    assert fr["name"] == "nightly-2026-01-02"
    arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
                      timeout=10).json()
    keys = {a["key"] for a in arts}
    assert "nightly-summary" in keys
    summary = next(a for a in arts if a["key"] == "nightly-summary")
    assert "Night 2026-01-02" in summary["data"]


def test_flows_schedule_serves_the_flow_on_its_cron(prefect_server, tmp_path):
    api, env = prefect_server
    config = _config(tmp_path, "UTC")
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([FLYWHEEL, "schedule", "--config", str(config)], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        def served():
            deps = [d for d in _deployments(api) if d["name"] == "nightly" and d.get("work_pool_name") is None]
            return deps[0] if deps else None
        dep = _wait(served, 120, "flywheel schedule did not create its deployment")
    finally:
        proc.send_signal(signal.SIGTERM)
        stop(proc)
    assert dep["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert dep["parameters"]["config_path"] == str(config.resolve())
