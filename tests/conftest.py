"""Shared test settings: offline, no analytics, each test's state in its own folder.

Area fixtures live in their own test modules or in tests/<area>/conftest.py; the moto S3 server and the dummy AWS
credentials are here, as two areas (data, gateway) use them.

No test may leave a process behind: pytest becomes the child subreaper of everything the suite starts (so a server's
orphaned workers stay in its process tree), and when the session ends, after every fixture is torn down, any live
descendant fails the run, named with the test module that was running when it was first seen (it is then killed).
"""
import ctypes
import os
import re
import signal
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

import psutil  # noqa: E402
import pytest  # noqa: E402

pytest_plugins = ["pytester"]  # tests/reliability/test_process_hygiene.py runs this file's session check
_PR_SET_CHILD_SUBREAPER = 36
_MP_HELPER = re.compile(r"from multiprocessing\.(forkserver|resource_tracker) import main")
_SEEN_IN: dict[tuple[int, float], str] = {}  # (pid, create_time) of a descendant -> the module that was running


def _descendants() -> dict[tuple[int, float], psutil.Process]:
    """Live (not zombie) descendants of this pytest process, by (pid, create_time); multiprocessing's forkserver and
    resource tracker, which live as long as the interpreter that started them, are not counted (their children are).
    """
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or (proc.ppid() == os.getpid() and _MP_HELPER.search(
                    " ".join(proc.cmdline()))):
                continue
            found[(proc.pid, proc.create_time())] = proc
        except psutil.NoSuchProcess:
            pass
    return found


def pytest_sessionstart(session):
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(scope="module", autouse=True)
def _note_new_processes(request):
    """Remember which module first saw each descendant, to name it if it outlives the session."""
    yield
    for key in _descendants():
        _SEEN_IN.setdefault(key, request.module.__name__)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any process the suite started is still alive (15 s of grace to exit), then kill it."""
    deadline = time.monotonic() + 15
    while (left := _descendants()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not left:
        return
    lines = []
    for key, proc in left.items():
        try:
            cmd = " ".join(proc.cmdline())[:160]
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
        seen = _SEEN_IN.get(key)
        lines.append(f"  pid {proc.pid} ({f'alive after {seen}' if seen else 'first seen at the end'}): {cmd}")
    if lines:
        report = f"\nFAILED: {len(lines)} process(es) outlived the test session (killed now):\n" + "\n".join(lines)
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(report, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
