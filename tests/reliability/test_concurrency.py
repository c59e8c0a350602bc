"""Concurrency of nightly runs (issue #13): ``flywheel/nightlock.py`` taken by plain processes.

Each holder is a real Python process that takes ``night_lock``, records when it got it, holds it until its release
marker file appears, then records when it let go. Nothing sleeps for time: the test polls files with a deadline.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel.nightlock import NightBusy, night_lock

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0

HOLDER = r"""
import pathlib, sys, time
from flywheel.nightlock import NightBusy, night_lock
state, day, out, wait_s = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), float(sys.argv[4])
try:
    with night_lock(state, day, wait_s=wait_s, poll_s=0.02, log=(out / "waiting").write_text):
        (out / "start").write_text(repr(time.time()))
        deadline = time.monotonic() + 60
        while not (out / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        (out / "end").write_text(repr(time.time()))
except NightBusy as e:
    (out / "busy").write_text(str(e))
    sys.exit(3)
"""


class Holder:
    def __init__(self, tmp: Path, name: str, day: str, wait_s: float = 60.0, release: bool = False):
        self.out = tmp / name
        self.out.mkdir()
        if release:
            (self.out / "release").touch()
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp / "state"), day, str(self.out),
                                      str(wait_s)], cwd=ROOT)
        self.pid = self.proc.pid

    def file(self, name: str) -> Path:
        return self.out / name

    def written(self, name: str) -> bool:
        return self.file(name).exists() and self.file(name).stat().st_size > 0

    def wait_file(self, name: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while not self.written(name):  # exists and not empty: write_text is not atomic
            assert self.proc.poll() is None or self.written(name), \
                f"{self.out.name} exited ({self.proc.returncode}) without writing {name}"
            assert time.monotonic() < deadline, f"{self.out.name} did not write {name} within {DEADLINE_S} s"
            time.sleep(0.01)
        return self.file(name).read_text()

    def release(self) -> int:
        self.file("release").touch()
        return self.proc.wait(timeout=DEADLINE_S)

    def window(self) -> tuple[float, float]:
        return float(self.file("start").read_text()), float(self.file("end").read_text())


@pytest.fixture
def holders(tmp_path):
    made: list[Holder] = []

    def make(name: str, day: str, **kw) -> Holder:
        made.append(Holder(tmp_path, name, day, **kw))
        return made[-1]

    yield make
    for h in made:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def test_same_night_twice_the_second_fails_naming_the_first(holders):
    first = holders("first", "2026-11-25")
    first.wait_file("start")
    second = holders("second", "2026-11-25")
    assert second.proc.wait(timeout=DEADLINE_S) == 3
    msg = second.file("busy").read_text()
    assert msg.startswith(f"night 2026-11-25 is already running (pid {first.pid}, started at 20"), msg
    assert not second.file("start").exists()
    assert first.release() == 0
    again = holders("again", "2026-11-25", release=True)  # once the first is done, the night can be rerun
    assert again.proc.wait(timeout=DEADLINE_S) == 0 and again.file("start").exists()


def test_different_nights_run_one_at_a_time(holders):
    first = holders("first", "2026-11-25")
    first.wait_file("start")
    second = holders("second", "2026-11-26", release=True)
    third = holders("third", "2026-11-27", release=True)
    for waiter in (second, third):
        msg = waiter.wait_file("waiting")
        assert f"waiting for night 2026-11-25 (pid {first.pid}," in msg, msg
        assert not waiter.file("start").exists()  # it logged that it waits, and it does
    assert first.release() == 0
    assert second.proc.wait(timeout=DEADLINE_S) == 0 and third.proc.wait(timeout=DEADLINE_S) == 0
    windows = sorted([first.window(), second.window(), third.window()])
    assert windows[0] == first.window()  # the holder first; the two waiters' order is approximate (flock keeps none)
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert end <= start, f"night windows overlap: {windows}"


def test_a_killed_holder_never_blocks(holders):
    first = holders("first", "2026-11-25")
    first.wait_file("start")
    os.kill(first.pid, signal.SIGKILL)
    assert first.proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    same = holders("same", "2026-11-25", wait_s=0, release=True)  # wait_s=0: it must get both locks on first try
    assert same.proc.wait(timeout=DEADLINE_S) == 0, same.file("busy").read_text()
    other = holders("other", "2026-11-26", wait_s=0, release=True)
    assert other.proc.wait(timeout=DEADLINE_S) == 0 and not other.file("waiting").exists()


def test_waiting_gives_up_after_wait_s(holders, tmp_path):
    first = holders("first", "2026-11-25")
    first.wait_file("start")
    with pytest.raises(NightBusy, match=rf"night 2026-11-26: gave up after 0 s waiting for night 2026-11-25 "
                                        rf"\(pid {first.pid},"), night_lock(tmp_path / "state", "2026-11-26", wait_s=0):
        pytest.fail("took the nightly lock while another night held it")
    assert issubclass(NightBusy, RuntimeError)
    # giving up released this night's own lock: the same night can be taken once the queue frees
    assert first.release() == 0
    with night_lock(tmp_path / "state", "2026-11-26", wait_s=0):
        pass


@pytest.mark.slow  # starts Prefect's test server
def test_second_flow_run_of_a_night_fails_with_the_message(holders, tmp_path):
    """The nightly flow takes the lock before its first stage: with the night held, the run fails, naming the holder,
    and nothing of the night is written (no observe, so no train/promote)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.continuous_improvement import continuous_improvement

    first = holders("first", "2026-11-25")
    first.wait_file("start")
    with prefect_test_harness(server_startup_timeout=120):
        state = continuous_improvement(day="2026-11-25", overrides={"project.state_dir": str(tmp_path / "state")},
                                       return_state=True)
    assert state.is_failed()
    assert f"night 2026-11-25 is already running (pid {first.pid}," in state.message, state.message
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["locks"]  # no stage ran
    assert first.release() == 0
