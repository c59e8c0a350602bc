"""Checkpoints of a PPO run: one atomic folder per update (``step-NNNNNN``), the training state written by rank 0
and every rank's RNG state next to it, so a killed run resumes with exactly the metrics of an uninterrupted one.

    <out>/checkpoints/step-000010/state.pt        adapters, value head, optimizer, scheduler, KL controller, history
    <out>/checkpoints/step-000010/rng-rank0.pt    torch / python / numpy RNG of rank 0 (one file per rank)
    <out>/checkpoints/step-000010/manifest.json   size and sha256 of every file above, written last by rank 0

A kill mid-write leaves only a ``.tmp`` folder, which resume ignores; a folder whose files do not match its manifest
(corrupted bytes, a missing file) is skipped with a warning and the previous one is used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, step: int) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))


def _put_in_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` (the same step again) is moved aside to ``.old`` first and
    deleted only after, so a kill in between leaves the old one (``load_latest`` reads ``.old`` folders too)."""
    old = path.with_suffix(".old")
    if path.exists():  # a run restarted with resume=False over an old folder
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    try:
        tmp.rename(path)  # atomic: the folder exists complete or not at all
    except OSError:
        if old.exists() and not path.exists():
            old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, rank: int, world: int, keep: int) -> Path:
    """Write ``state`` (rank 0) and each rank's RNG into ``ckpt_dir/step-{step}``, the manifest last; keep the newest
    ``keep``. An ``OSError`` (disk full, ...) removes the partial folder and is raised again naming the checkpoint;
    the checkpoints written before stay as they were."""
    path = ckpt_dir / f"step-{step:06d}"
    tmp = path.with_suffix(".tmp")
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save(state, tmp / "state.pt")
        _barrier(world)
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
        _barrier(world)
        if rank == 0:
            _write_manifest(tmp, step)
            _put_in_place(tmp, path)
    except OSError as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(e.errno, f"could not write checkpoint {path} (rank {rank}): {e.strerror or e}") from e
    if rank == 0:
        for stale in sorted(ckpt_dir.glob("step-??????"))[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(stale.with_suffix(".old"), ignore_errors=True)
    _barrier(world)
    return path


def _problem(folder: Path) -> str | None:
    """Why the files of ``folder`` do not match its manifest, or None when they all do."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest: {e}"
    for name, want in files.items():
        file = folder / name
        if not file.is_file():
            return f"{name} listed in the manifest is missing"
        size = file.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']}"
        if _sha256(file) != want["sha256"]:
            return f"{name} sha256 does not match the manifest"
    return None


def _candidates(ckpt_dir: Path) -> list[Path]:
    """Step folders newest first; a ``.old`` folder stands in for its step when a kill left no ``step-NNNNNN``."""
    folders = {p.name: p for p in ckpt_dir.glob("step-??????") if p.is_dir()}
    for old in ckpt_dir.glob("step-??????.old"):
        if old.is_dir():
            folders.setdefault(old.name.removesuffix(".old"), old)
    return [folders[name] for name in sorted(folders, reverse=True)]


def load_latest(ckpt_dir: Path, rank: int) -> tuple[dict, dict] | None:
    """(training state, this rank's RNG state) of the newest verified checkpoint, or None when there is none.

    A folder is used when its ``manifest.json`` lists every file with the size and sha256 it has; a folder that fails
    (missing or unreadable manifest, a missing file, another size or hash, files torch cannot load) is skipped with a
    warning naming it and why, and the previous one is tried. A folder without a manifest is accepted as one written
    by an older version (before manifests) only when it is older than every folder that has one and torch loads its
    files; a manifest-less folder newer than one with a manifest lost its manifest and is skipped.
    """
    folders = _candidates(ckpt_dir) if ckpt_dir.is_dir() else []
    manifested = [f for f in folders if (f / MANIFEST).exists()]
    oldest_manifested = manifested[-1].name[:11] if manifested else None  # step-NNNNNN
    for folder in folders:
        if (folder / MANIFEST).exists():
            problem = _problem(folder)
        elif oldest_manifested is not None and folder.name[:11] > oldest_manifested:
            problem = "missing manifest (newer than a checkpoint that has one)"
        else:
            problem = None  # written before manifests: only torch.load below vouches for it
        if problem is None:
            try:
                return (torch.load(folder / "state.pt", weights_only=False),
                        torch.load(folder / f"rng-rank{rank}.pt", weights_only=False))
            except Exception as e:  # noqa: BLE001 - any failure to load means this checkpoint is unusable
                problem = f"unreadable: {type(e).__name__}: {e}"
        log.warning("skipping checkpoint %s: %s", folder, problem)
    return None
