"""Child processes that never outlive the command that started them.

``spawn`` starts a child in its own session (its own process group), so ``stop_group`` can stop it together with
every worker it forks; ``sigterm_as_interrupt`` makes ``kill <pid>`` run the same cleanup as Ctrl-C. On Linux the
child also gets SIGTERM when the command dies without cleaning up (SIGKILL, a crash): ``PR_SET_PDEATHSIG``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kw)`` in a new session: the child leads a process group of its own, and on Linux is
    sent SIGTERM if this process dies first."""
    if sys.platform.startswith("linux"):
        kw.setdefault("preexec_fn", _terminate_with_parent)
    return subprocess.Popen(cmd, start_new_session=True, **kw)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt (so ``finally`` cleanup runs); the old handler is restored."""
    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def stop_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> int | None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``timeout_s``, reap ``proc``; its exit code.

    The group is killed even when its leader has already exited, so workers it left behind stop too.
    """
    return stop_groups([proc], timeout_s)[0]


def stop_groups(procs: list[subprocess.Popen], timeout_s: float = 15.0) -> list[int | None]:
    """``stop_group`` for several groups at once: SIGTERM to all, one shared ``timeout_s``, then SIGKILL to what is
    left, so stopping N servers takes as long as the slowest, not the sum."""
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stopped(proc: subprocess.Popen) -> bool:
        return proc.poll() is not None and not _group_alive(proc.pid)

    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(stopped(p) for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if not stopped(proc):
            _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    return [proc.returncode for proc in procs]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
