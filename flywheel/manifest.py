"""The observe manifest: which log objects of a source were processed (key -> version tag, day, status).

One JSON file per source under ``<state>/manifest/``; observe writes the night's entries to a pending file and
``commit_manifest`` merges them once the snapshot has been validated (under a file lock: nights may overlap).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
from filelock import FileLock

from flywheel.records import Observation


def manifest_path(state_dir: str | Path, source_uri: str) -> Path:
    """The manifest file of ``source_uri`` under ``state_dir`` (one per source)."""
    digest = hashlib.sha256(source_uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(state_dir) / "manifest" / f"{digest}.json"


def load_manifest(path: Path) -> dict:
    """``{"source": uri, "objects": {key: {"etag", "size", "dt", "status", ...}}}``; empty when never written."""
    if not path.exists():
        return {"source": None, "objects": {}}
    return orjson.loads(path.read_bytes())


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def commit_manifest(observation: Observation, state_dir: str | Path) -> int:
    """Merge the objects of ``observation`` into the source's manifest; returns how many entries it added or updated."""
    if not observation.manifest_pending_uri or not Path(observation.manifest_pending_uri).exists():
        return 0
    path = manifest_path(state_dir, observation.source_uri)
    with FileLock(str(path) + ".lock", timeout=600):
        manifest = load_manifest(path)
        manifest["source"] = observation.source_uri
        pending = orjson.loads(Path(observation.manifest_pending_uri).read_bytes())
        manifest["objects"].update(pending)
        write_atomic(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        Path(observation.manifest_pending_uri).unlink()
    return len(pending)
