"""The private folders of the state dir (``<state>/quarantine/``, ``<state>/raw/``): the only places raw input is kept.

Each rejected row keeps its original line (before PII scrubbing) so an operator can see exactly what was rejected and
why; whole unreadable objects and bad feedback events are listed beside them. Because those records may hold PII and
secrets a user pasted, the folder is owner-only (0700) and every file in it owner-only (0600), whatever the umask.
Nothing downstream of validate reads it. Observe's raw snapshots (``<state>/raw/``, validate's input) are kept
owner-only the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

DIR_MODE, FILE_MODE = 0o700, 0o600


def private_folder(path: Path) -> Path:
    """``path`` created (or tightened) to owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)  # mkdir's mode is reduced by the umask, and an existing folder keeps its own
    return path


def quarantine_dir(state_dir: str | Path) -> Path:
    """``<state>/quarantine``, created (or tightened) to owner-only."""
    return private_folder(Path(state_dir) / "quarantine")


def raw_dir(state_dir: str | Path) -> Path:
    """``<state>/raw``, owner-only: observe's raw snapshots (every row as read, before validation and PII scrubbing;
    validate's input, kept so a rerun of the night can validate again)."""
    return private_folder(Path(state_dir) / "raw")


def open_private(path: str | Path):
    """``path`` opened for binary writing (truncated), created owner-only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")


def write_private(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a quarantine file atomically (a 0600 temp file renamed over ``path``, its folder 0700)."""
    path = Path(path)
    private_folder(path.parent)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open_private(tmp) as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path
