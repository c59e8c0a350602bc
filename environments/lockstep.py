"""Collect trajectories in lockstep: one batched policy call per step answers every running episode of a wave.

Design
------
``collect`` (environments.collect) asks a per-episode policy from worker threads, so a model behind it sees one
conversation at a time. ``collect_batched`` runs the ``len(task_ids) * trials`` episodes in waves of
``batch_size``, in ``(task_id, trial)`` order: every episode of a wave has its own ``Environment`` over its own
copy of the domain's template database, and at each step ONE call
``batch_policy(list_of_messages, list_of_Episode) -> list[str | PolicyOutput]`` answers every episode of the wave
that is still running, so the model can generate for all of them in one batch. Episodes that end drop out of
the next call; the wave ends when all have ended, and the next wave starts.

The output is the one ``collect`` writes: the same JSONL record per episode, sorted by ``(task_id, trial)``,
the same seeds (``episode_seed``), end reasons and ``CollectSummary`` (its ``workers`` is the wave size). A
deterministic policy writes the same file through either collector, except each line's ``timing``: here a
batched call's seconds are shared equally among the episodes it answered.

A batch policy that raises, or returns other than one output per running episode, ends all running episodes
of that wave with ``policy_error: <type>: <message>``; a single malformed output ends only its episode. The run
goes on with the next wave. Any other exception stops the run, writes nothing and propagates; every database
and environment is closed either way.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from environments.collect import (
    CollectSummary,
    Episode,
    PolicyOutput,
    _as_output,
    _check_arguments,
    _summarise,
    _Worker,
    _write_jsonl,
    episode_record,
    episode_seed,
)
from environments.domain import Domain
from environments.users import ScriptedUser, User, UserError

BatchPolicy = Callable[[list[list[dict[str, Any]]], list[Episode]], Sequence["str | PolicyOutput"]]


@dataclass
class _Slot:
    """One episode of a wave: its worker (an environment over a private database copy) and what it recorded."""

    worker: _Worker
    episode: Episode
    turns: list[dict[str, Any]] = field(default_factory=list)
    policy_s: float = 0.0
    env_s: float = 0.0
    reward: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)
    end_reason: str | None = None
    opened: bool = True

    def open(self) -> None:
        start = time.perf_counter()
        try:
            self.worker.env.reset(self.episode.task_id)
        except UserError as exc:  # the user could not open the conversation
            self.end_reason, self.opened = f"user_error: {exc}", False
        self.env_s += time.perf_counter() - start

    def step(self, output: PolicyOutput) -> None:
        start = time.perf_counter()
        _, self.reward, terminated, truncated, info = self.worker.env.step(output.text)
        self.env_s += time.perf_counter() - start
        self.turns.append({"text": output.text, "context_ids": output.context_ids, "token_ids": output.token_ids,
                           "logprobs": output.logprobs, "reward": 0.0})
        self.checks = info["checks"]
        if terminated or truncated:
            self.end_reason = info["end_reason"]

    def record(self, model_version: str | None) -> dict[str, Any]:
        """The episode as its JSONL record (the format of ``collect``)."""
        return episode_record(self.worker.env, self.episode, self.turns, self.reward, self.checks,
                              self.end_reason, self.opened, model_version, self.policy_s, self.env_s)


def _ask_batch(batch_policy: BatchPolicy, running: list[_Slot]) -> list[Any]:
    """The batch policy's outputs for ``running``, one per episode; raises when it fails or miscounts."""
    outputs = batch_policy([list(s.worker.env.messages) for s in running], [s.episode for s in running])
    if isinstance(outputs, str | PolicyOutput):
        raise TypeError(f"batch policy returned one {type(outputs).__name__}, expected a list of outputs")
    outputs = list(outputs)
    if len(outputs) != len(running):
        raise ValueError(f"batch policy returned {len(outputs)} outputs for {len(running)} episodes")
    return outputs


def _step_wave(batch_policy: BatchPolicy, running: list[_Slot]) -> None:
    """One lockstep step: one batched policy call, then one environment step per running episode."""
    start = time.perf_counter()
    try:
        outputs, error = _ask_batch(batch_policy, running), None
    except Exception as exc:  # a policy bug or a failed model call ends this wave's running episodes only
        outputs, error = [], f"policy_error: {type(exc).__name__}: {exc}"
    share = (time.perf_counter() - start) / len(running)
    for index, slot in enumerate(running):
        slot.policy_s += share
        if error is not None:
            slot.end_reason = error
            continue
        try:
            output = _as_output(outputs[index])
        except (TypeError, ValueError) as exc:  # a malformed output ends its own episode
            slot.end_reason = f"policy_error: {type(exc).__name__}: {exc}"
            continue
        slot.step(output)


def _run_wave(domain: Domain, batch_policy: BatchPolicy, jobs: list[tuple[str, int]], *, max_steps: int,
              model_version: str | None, seed: int, user_factory: Callable[[], User]) -> list[dict[str, Any]]:
    """Play the episodes ``jobs`` in lockstep to their ends; returns their records in ``jobs`` order."""
    slots: list[_Slot] = []
    try:
        for task_id, trial in jobs:
            own = replace(domain, db=domain.db.fresh())  # this episode's private template copy
            worker = _Worker(own, user_factory, max_steps, batch_policy, model_version, seed)
            slots.append(_Slot(worker, Episode(task_id, trial, episode_seed(seed, task_id, trial))))
        for slot in slots:
            slot.open()
        while running := [s for s in slots if s.end_reason is None]:
            _step_wave(batch_policy, running)
        return [s.record(model_version) for s in slots]
    finally:
        for slot in slots:
            slot.worker.close()


def collect_batched(domain: Domain, batch_policy: BatchPolicy, task_ids: Sequence[str] | None = None,
                    trials: int = 1, out_path: str | Path = "trajectories.jsonl", max_steps: int = 30,
                    model_version: str | None = None, seed: int = 0,
                    user_factory: Callable[[], User] = ScriptedUser, batch_size: int = 64) -> CollectSummary:
    """Run ``batch_policy`` on every ``(task, trial)``, ``batch_size`` episodes in lockstep, and write the JSONL."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    task_ids = [t.id for t in domain.tasks] if task_ids is None else [str(t) for t in task_ids]
    _check_arguments(domain, task_ids, trials, 1, max_steps)
    jobs = sorted((task_id, trial) for task_id in task_ids for trial in range(trials))
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for first in range(0, len(jobs), batch_size):
        records += _run_wave(domain, batch_policy, jobs[first:first + batch_size], max_steps=max_steps,
                             model_version=model_version, seed=seed, user_factory=user_factory)
    seconds = time.perf_counter() - start
    records.sort(key=lambda r: (r["task_id"], r["trial"]))
    out_path = Path(out_path)
    _write_jsonl(records, out_path)
    return _summarise(records, out_path, seconds, min(batch_size, len(jobs)), model_version)
