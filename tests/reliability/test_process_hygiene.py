"""Stopping ``flywheel ui`` by its PID stops everything it started (issue #13, process hygiene).

The real command starts a real Prefect server and a real MLflow UI (each with its own workers). Once both answer
HTTP, every descendant process of the command is recorded; then only the command's PID gets SIGTERM (``kill <pid>``)
or SIGINT (Ctrl-C). Within a deadline the command must have exited and no recorded descendant may be left running.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

STARTUP_S = 180  # two servers on a busy 2-core machine
STOP_S = 45  # ui gives both server groups 15 s of SIGTERM together, then SIGKILL (and 10 s to reap)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(str(p.pid))
    return out


def _interruptible() -> None:
    """In the child: SIGINT as in a terminal. A suite started in the background (``cmd &`` in a script) inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler, as POSIX asks of an ignored signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_stopping_flywheel_ui_by_pid_stops_both_servers_and_their_workers(tmp_path, sig):
    p_port, m_port = _free_port(), _free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    cli = str(Path(sys.executable).parent / "flywheel")
    log = tmp_path / "ui.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([cli, "ui", "--state", str(tmp_path / "state"), "--prefect-port", str(p_port),
                                 "--mlflow-port", str(m_port)], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_interruptible)
    recorded: list[psutil.Process] = []
    try:
        urls = [f"http://127.0.0.1:{p_port}/api/health", f"http://127.0.0.1:{m_port}/health"]
        deadline = time.monotonic() + STARTUP_S
        while not all(_answers(u) for u in urls):
            assert proc.poll() is None, f"flywheel ui exited with {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"servers not up after {STARTUP_S} s: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        recorded = psutil.Process(proc.pid).children(recursive=True)
        cmdlines = " ".join(" ".join(p.cmdline()) for p in recorded if _running(p))
        assert "prefect" in cmdlines and "mlflow" in cmdlines, cmdlines

        os.kill(proc.pid, sig)  # the command's PID only, as `kill <pid>` does

        deadline = time.monotonic() + STOP_S
        while (proc.poll() is None or any(_running(p) for p in recorded)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is not None, f"flywheel ui still running {STOP_S} s after {sig.name}: " \
                                        f"{log.read_text()[-2000:]}"
        left = [p for p in recorded if _running(p)]
        assert not left, f"left running after {sig.name} to flywheel ui: {_describe(left)}"
        assert not _answers(urls[0]) and not _answers(urls[1])
    finally:  # never leave a process behind, whatever failed above
        for p in recorded:
            with contextlib.suppress(psutil.Error):
                p.kill()  # psutil checks the PID was not reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


LEAKING_TEST = '''
import subprocess, sys, time

def test_starts_a_server_and_forgets_it():
    # a parent that exits at once, leaving its child orphaned (as a server's worker is when the server is killed)
    subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                    "'import time; time.sleep(600)  # leftover-marker'])"], check=True)
'''


def test_the_suite_fails_when_a_test_leaves_a_process_behind(pytester):
    """The session check of tests/conftest.py: an orphaned grandchild still alive at the end fails the run, is named
    with its module, and is killed."""
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(test_leaky=LEAKING_TEST)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*FAILED: 1 process(es) outlived the test session*",
                                 "*pid * (alive after test_leaky): *leftover-marker*"])
    assert not [p for p in psutil.process_iter(["cmdline"]) if "leftover-marker" in " ".join(p.info["cmdline"] or [])]


def test_the_suite_passes_when_every_process_is_stopped(pytester):
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(test_tidy='''
import subprocess, sys

def test_starts_and_stops_a_server():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc.terminate()
    proc.wait()
''')
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
