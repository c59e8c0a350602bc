"""Checkpoints of a PPO run: one atomic folder per update (``step-NNNNNN``), the training state written by rank 0
and every rank's RNG state next to it, so a killed run resumes with exactly the metrics of an uninterrupted one.

    <out>/checkpoints/step-000010/state.pt        adapters, value head, optimizer, scheduler, KL controller, history
    <out>/checkpoints/step-000010/rng-rank0.pt    torch / python / numpy RNG of rank 0 (one file per rank)

A kill mid-write leaves only a ``.tmp`` folder, which resume ignores.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, rank: int, world: int, keep: int) -> Path:
    """Write ``state`` (rank 0) and each rank's RNG into ``ckpt_dir/step-{step}``; keep the newest ``keep``."""
    path = ckpt_dir / f"step-{step:06d}"
    tmp = path.with_suffix(".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "state.pt")
    _barrier(world)
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    _barrier(world)
    if rank == 0:
        if path.exists():  # the same step again: a run restarted with resume=False over an old folder
            shutil.rmtree(path)
        tmp.rename(path)  # atomic: the folder exists complete or not at all
        for old in sorted(ckpt_dir.glob("step-??????"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(world)
    return path


def load_latest(ckpt_dir: Path, rank: int) -> tuple[dict, dict] | None:
    """(training state, this rank's RNG state) of the newest complete checkpoint, or None when there is none."""
    done = sorted(ckpt_dir.glob("step-??????")) if ckpt_dir.is_dir() else []
    if not done:
        return None
    state = torch.load(done[-1] / "state.pt", weights_only=False)
    return state, torch.load(done[-1] / f"rng-rank{rank}.pt", weights_only=False)
