"""One nightly run per night, and one night at a time, per state dir (issue #13, concurrency).

``night_lock(state_dir, day)`` takes two ``fcntl.flock`` locks under ``<state>/locks/``:

1. ``night-<day>.lock``, non-blocking: a second run of the same night fails at once with ``NightBusy`` naming the
   holder (its pid and start time, which the holder writes into the lock file), so a night is never promoted twice;
2. ``nightly.lock``, polled until ``wait_s`` runs out: runs of different nights wait for each other and run one at
   a time. The order is approximately the order they asked in: flock keeps no queue, so when the holder releases,
   whichever waiter polls next wins (waiters poll every ``poll_s``; two that started within one poll of each other
   may swap).

The kernel releases a flock when its process dies (even SIGKILL), so a dead holder never blocks the next night; the
lock files stay behind, holding the last holder's pid for the record. Local state dirs only (flock over NFS is not
reliable).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["NightBusy", "night_lock"]

DEFAULT_WAIT_S = 6 * 3600.0


class NightBusy(RuntimeError):
    """This night is already running, or the queue of nights did not free up within ``wait_s``."""


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int, day: str) -> None:
    info = {"pid": os.getpid(), "day": day, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def _read_holder(fd: int, settle_s: float = 1.0) -> dict:
    """The holder's record; polls briefly, since a holder that just took the lock may not have written it yet."""
    deadline = time.monotonic() + settle_s
    while True:
        raw = os.pread(fd, 4096, 0)
        try:
            return json.loads(raw)
        except ValueError:
            if time.monotonic() >= deadline:
                return {}
            time.sleep(0.02)


def _who(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')}, started at {holder.get('started', '?')}"


def _wait_turn(fd: int, day: str, wait_s: float, poll_s: float, log: Callable[[str], None]) -> None:
    """Poll ``nightly.lock`` until it is ours; log once whom we wait for; NightBusy after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    logged = False
    while not _try_lock(fd):
        holder = _read_holder(fd)
        if not logged:
            log(f"night {day}: waiting for night {holder.get('day', '?')} ({_who(holder)}) to finish")
            logged = True
        if time.monotonic() >= deadline:
            raise NightBusy(f"night {day}: gave up after {wait_s:.0f} s waiting for night {holder.get('day', '?')} "
                            f"({_who(holder)}) to finish")
        time.sleep(poll_s)


@contextmanager
def night_lock(state_dir: str | os.PathLike, day: str, wait_s: float = DEFAULT_WAIT_S, poll_s: float = 1.0,
               log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold night ``day``'s lock and the state dir's one-night-at-a-time lock for the body (see the module doc)."""
    log = log or logging.getLogger(__name__).info
    locks = Path(state_dir) / "locks"
    night_fd = _open(locks / f"night-{day}.lock")
    try:
        if not _try_lock(night_fd):
            holder = _read_holder(night_fd)
            raise NightBusy(f"night {day} is already running ({_who(holder)}); lock file {locks}/night-{day}.lock")
        _write_holder(night_fd, day)
        queue_fd = _open(locks / "nightly.lock")
        try:
            _wait_turn(queue_fd, day, wait_s, poll_s, log)
            _write_holder(queue_fd, day)
            yield
        finally:
            os.close(queue_fd)  # closing the last descriptor releases the flock
    finally:
        os.close(night_fd)
