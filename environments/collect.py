"""Collect agent trajectories: run a policy through episodes in parallel and write them as JSONL.

Design
------
A policy is any callable ``policy(messages) -> str | PolicyOutput``: it gets the conversation so far (OpenAI
messages, system prompt first) and returns the assistant's next message, as raw text (``<tool_call>`` blocks
are parsed by the environment) or as a ``PolicyOutput`` that also carries the exact ``token_ids`` and
``logprobs`` the model sampled. Those are stored as given, never re-tokenised, so an RL step can use the
sampling-time log-probabilities. A policy whose signature has an ``episode`` parameter is also passed an
``Episode`` (task id, trial, seed), which a seeded sampler or an oracle needs; others never see it.

``collect`` runs ``len(task_ids) * trials`` episodes on a ``ThreadPoolExecutor`` of ``workers`` threads. Each
worker owns one ``Environment`` over its own copy of the domain's template database (copied once, under a
lock), so episodes never share database state, and pulls ``(task_id, trial)`` pairs from a shared queue
until it is empty. Episode seeds derive from ``seed``, the task id and the trial (SHA-256), never from thread
scheduling, and the output is sorted by ``(task_id, trial)`` and written atomically, so two runs of a
deterministic policy write the same file whatever ``workers`` is (except each line's ``timing``).

A policy that raises (or returns something that is not a ``str`` / ``PolicyOutput``) ends that episode with
``end_reason = "policy_error: <type>: <message>"`` and reward 0; the run goes on. A simulated user that cannot
open the conversation ends it with ``user_error: ...``. Any other exception (a broken task, a bug in the
environment) stops every worker and propagates, since it would corrupt the whole run.

One JSONL line per episode: ``task_id``, ``trial``, ``seed``, ``messages`` (the full trajectory), ``turns`` (per
assistant turn: ``text``, ``context_ids``, ``token_ids``, ``logprobs``, ``reward``; the concatenation over turns
of ``context_ids + token_ids`` is the policy's exact token stream), ``rewards`` (per turn, 0 until the last),
``reward``, ``checks``, ``tool_errors``, ``end_reason``, ``steps``, ``model_version`` and ``timing`` (seconds in
the policy and in the environment). ``CollectSummary`` aggregates the run; ``pass_hat_k`` is computed from it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from environments.domain import Domain
from environments.env import Environment, pass_hat_k
from environments.users import ScriptedUser, User, UserError

SUCCESS_REWARD = 1.0  # an episode succeeds when its reward reaches this (tau-bench: every check passed)


@dataclass(frozen=True)
class PolicyOutput:
    """One assistant message and, optionally, the tokens and log-probabilities sampled for it.

    ``context_ids`` are the tokens the policy appended to its own token stream before sampling this turn: the
    whole rendered prompt on the first turn, afterwards the rendered tool/user turns since its previous message.
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    context_ids: list[int] | None = None


@dataclass(frozen=True)
class Episode:
    """Which episode a policy is playing (passed only to policies with an ``episode`` parameter)."""

    task_id: str
    trial: int
    seed: int


Policy = Callable[..., "str | PolicyOutput"]


@dataclass
class CollectSummary:
    """Aggregate figures of one ``collect`` run; ``success_by_task[task_id][trial]`` feeds pass^k."""

    out_path: str
    episodes: int
    successes: int
    mean_reward: float
    success_by_task: dict[str, list[bool]]
    end_reasons: dict[str, int]
    policy_errors: int
    seconds: float
    policy_seconds: float
    env_seconds: float
    workers: int
    model_version: str | None = None

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def policy_share(self) -> float:
        """Share of the episodes' time spent in the policy (the rest is the environment)."""
        total = self.policy_seconds + self.env_seconds
        return self.policy_seconds / total if total else 0.0

    def pass_hat_k(self, k: int) -> float:
        return pass_hat_k(list(self.success_by_task.values()), k)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.success_rate, "policy_share": self.policy_share}


def episode_seed(seed: int, task_id: str, trial: int) -> int:
    """A 31-bit seed for one episode, stable across runs, machines and worker counts."""
    digest = hashlib.sha256(f"{seed}:{task_id}:{trial}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _wants_episode(policy: Policy) -> bool:
    try:
        parameters = inspect.signature(policy).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
    return any(p.name == "episode" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _as_output(result: Any) -> PolicyOutput:
    """The policy's return value as a validated ``PolicyOutput``; ``TypeError`` / ``ValueError`` otherwise."""
    if isinstance(result, str):
        return PolicyOutput(result)
    if not isinstance(result, PolicyOutput):
        raise TypeError(f"policy returned {type(result).__name__}, expected str or PolicyOutput")
    if not isinstance(result.text, str):
        raise TypeError(f"PolicyOutput.text is {type(result.text).__name__}, expected str")
    for name in ("context_ids", "token_ids"):
        ids = getattr(result, name)
        if ids is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise TypeError(f"PolicyOutput.{name} must be a list of ints")
    if result.logprobs is not None and not all(isinstance(x, int | float) and not isinstance(x, bool)
                                               for x in result.logprobs):
        raise TypeError("PolicyOutput.logprobs must be a list of floats")
    if result.token_ids is not None and result.logprobs is not None and len(result.token_ids) != len(result.logprobs):
        raise ValueError(f"PolicyOutput has {len(result.token_ids)} token_ids but {len(result.logprobs)} logprobs")
    return result


class _Worker:
    """One thread's environment, over a private copy of the domain's template database."""

    def __init__(self, domain: Domain, user_factory: Callable[[], User], max_steps: int, policy: Policy,
                 model_version: str | None, seed: int):
        self.domain = domain
        # a policy whose chat template renders the tool schemas (``TokenPolicy.tools``) gets them once, from there
        self.env = Environment(domain, user_factory, max_steps=max_steps,
                               tools_in_prompt=getattr(policy, "tools", None) is None)
        self.policy, self.model_version, self.seed = policy, model_version, seed
        self.pass_episode = _wants_episode(policy)

    def close(self) -> None:
        user_close = getattr(getattr(self.env, "_user", None), "close", None)  # an LLMUser's HTTP client
        if user_close:
            user_close()
        if self.env.db is not None:
            self.env.db.close()
        self.domain.db.close()

    def _ask(self, messages: list[dict[str, Any]], episode: Episode) -> PolicyOutput:
        if self.pass_episode:
            return _as_output(self.policy(messages, episode=episode))
        return _as_output(self.policy(messages))

    def run(self, task_id: str, trial: int) -> dict[str, Any]:
        """One episode as its JSONL record."""
        episode = Episode(task_id, trial, episode_seed(self.seed, task_id, trial))
        env, turns = self.env, []
        policy_s = env_s = 0.0
        reward, checks, end_reason, opened = 0.0, {}, None, True
        start = time.perf_counter()
        try:
            env.reset(task_id)
        except UserError as exc:  # the user could not open: env.messages still hold the previous episode
            end_reason, opened = f"user_error: {exc}", False
        env_s += time.perf_counter() - start
        while end_reason is None:
            start = time.perf_counter()
            try:
                output = self._ask(list(env.messages), episode)
            except Exception as exc:  # a policy bug or a failed model call ends this episode only
                end_reason = f"policy_error: {type(exc).__name__}: {exc}"
                break
            finally:
                policy_s += time.perf_counter() - start
            start = time.perf_counter()
            _, reward, terminated, truncated, info = env.step(output.text)
            env_s += time.perf_counter() - start
            turns.append({"text": output.text, "context_ids": output.context_ids, "token_ids": output.token_ids,
                          "logprobs": output.logprobs, "reward": 0.0})
            checks = info["checks"]
            if terminated or truncated:
                end_reason = info["end_reason"]
        return episode_record(env, episode, turns, reward, checks, end_reason, opened, self.model_version,
                              policy_s, env_s)


def episode_record(env: Environment, episode: Episode, turns: list[dict[str, Any]], reward: float,
                   checks: dict[str, Any], end_reason: str | None, opened: bool, model_version: str | None,
                   policy_s: float, env_s: float) -> dict[str, Any]:
    """An episode's JSONL record (the format both collectors write); the last turn gets the episode's reward."""
    if turns:
        turns[-1]["reward"] = reward
    return {"task_id": episode.task_id, "trial": episode.trial, "seed": episode.seed,
            "messages": list(env.messages) if opened else [], "turns": turns,
            "rewards": [t["reward"] for t in turns], "reward": reward, "checks": checks,
            "tool_errors": dict(env.errors), "end_reason": end_reason, "steps": env.steps,
            "model_version": model_version, "timing": {"policy_s": round(policy_s, 6), "env_s": round(env_s, 6)}}


def _write_jsonl(records: list[dict[str, Any]], out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(out_path)


def _check_arguments(domain: Domain, task_ids: Sequence[str], trials: int, workers: int, max_steps: int) -> None:
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if not task_ids:
        raise ValueError("collect needs at least one task id")
    duplicates = sorted({t for t in task_ids if list(task_ids).count(t) > 1})
    if duplicates:
        raise ValueError(f"duplicate task ids {duplicates}: use trials to repeat a task")
    known = {t.id for t in domain.tasks}
    unknown = [t for t in task_ids if t not in known]
    if unknown:
        raise KeyError(f"domain {domain.name}: no tasks {unknown}")


def collect(domain: Domain, policy: Policy, task_ids: Sequence[str] | None = None, trials: int = 1,
            workers: int = 4, out_path: str | Path = "trajectories.jsonl", max_steps: int = 30,
            model_version: str | None = None, seed: int = 0,
            user_factory: Callable[[], User] = ScriptedUser) -> CollectSummary:
    """Run ``policy`` on every ``(task, trial)``, ``workers`` episodes at a time, and write the JSONL."""
    task_ids = [t.id for t in domain.tasks] if task_ids is None else [str(t) for t in task_ids]
    _check_arguments(domain, task_ids, trials, workers, max_steps)
    jobs: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
    for task_id in task_ids:
        for trial in range(trials):
            jobs.put((task_id, trial))
    workers = min(workers, len(task_ids) * trials)
    records: list[dict[str, Any]] = []
    copy_lock, records_lock, failed = threading.Lock(), threading.Lock(), threading.Event()

    def work() -> None:
        with copy_lock:  # the template connection is shared: copy it one thread at a time
            own = replace(domain, db=domain.db.fresh())
        worker = _Worker(own, user_factory, max_steps, policy, model_version, seed)
        try:
            while not failed.is_set():
                try:
                    task_id, trial = jobs.get_nowait()
                except queue.Empty:
                    return
                record = worker.run(task_id, trial)
                with records_lock:
                    records.append(record)
        except BaseException:
            failed.set()
            raise
        finally:
            worker.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
        for future in futures:
            future.result()  # re-raises a worker's exception here
    seconds = time.perf_counter() - start
    records.sort(key=lambda r: (r["task_id"], r["trial"]))
    out_path = Path(out_path)
    _write_jsonl(records, out_path)
    return _summarise(records, out_path, seconds, workers, model_version)


def _summarise(records: list[dict[str, Any]], out_path: Path, seconds: float, workers: int,
               model_version: str | None) -> CollectSummary:
    by_task: dict[str, list[bool]] = {}
    end_reasons: dict[str, int] = {}
    for record in records:  # sorted by (task_id, trial), so each list is in trial order
        by_task.setdefault(record["task_id"], []).append(record["reward"] >= SUCCESS_REWARD)
        reason = str(record["end_reason"]).split(":", 1)[0]
        end_reasons[reason] = end_reasons.get(reason, 0) + 1
    rewards = [r["reward"] for r in records]
    return CollectSummary(
        out_path=str(out_path), episodes=len(records), successes=sum(sum(v) for v in by_task.values()),
        mean_reward=sum(rewards) / len(rewards) if rewards else 0.0, success_by_task=by_task,
        end_reasons=dict(sorted(end_reasons.items())), policy_errors=end_reasons.get("policy_error", 0),
        seconds=seconds, policy_seconds=sum(r["timing"]["policy_s"] for r in records),
        env_seconds=sum(r["timing"]["env_s"] for r in records), workers=workers, model_version=model_version)


@dataclass
class ReferencePolicy:
    """The oracle: replays each task's reference actions as ``<tool_call>`` blocks, one per turn, then says
    every ``communicate_info`` string. It scores 1 on every well-formed task; benchmarks and tests use it."""

    domain: Domain
    _cache: dict[str, tuple[list[str], str]] = field(default_factory=dict, repr=False)

    def _script(self, task_id: str) -> tuple[list[str], str]:
        if task_id not in self._cache:
            criteria = self.domain.task(task_id).evaluation_criteria
            calls = [f'<tool_call>{json.dumps({"name": a.name, "arguments": a.arguments})}</tool_call>'
                     for a in criteria.actions]
            self._cache[task_id] = calls, f"All done. {' '.join(criteria.communicate_info)} Have a nice day."
        return self._cache[task_id]

    def __call__(self, messages: list[dict[str, Any]], episode: Episode) -> str:
        calls, final = self._script(episode.task_id)
        turn = sum(m["role"] == "assistant" for m in messages)
        return calls[turn] if turn < len(calls) else final
