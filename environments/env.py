"""A Gymnasium/OpenEnv-style environment over a domain, its tau2-style reward, and the pass^k estimator.

Design
------
``reset(task)`` takes a fresh copy of the domain's database and returns the opening observation: the system
prompt (policy + tools) and the user's first message. ``step(assistant_message)`` takes the model's raw text
(``<tool_call>`` blocks are parsed) or an OpenAI assistant message dict and returns
``(observation, reward, terminated, truncated, info)`` (``reset`` raises ``UserError`` if the user cannot
open the conversation) where the observation is the list of new messages:
the tool results when the message called tools, else the user's reply. The episode terminates when the user
says ``###STOP###`` or a terminal tool (a hand-off to a human) runs; it truncates after ``max_steps`` steps
or when the simulated user fails (``UserError``: ``end_reason`` is ``user_error: ...``).

The reward is 0 until termination, then the product of the task's supported checks (tau2-bench):
``DB``: the final ``state_hash()`` equals that of a fresh copy on which the reference actions were replayed;
``ACTION``: every reference action was called with its arguments (those in ``compare_args``, else all of the
reference's arguments, compared as parsed JSON); ``COMMUNICATE``: every ``communicate_info`` string occurs,
case-insensitively, in the agent's messages. ``info`` carries the checks, tool error counts by kind, the
trajectory (OpenAI messages with ``tool_calls`` and ``tool`` roles) and the end reason.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from math import comb
from typing import Any

from environments.db import MockDatabase
from environments.domain import Domain
from environments.tasks import Action, Task
from environments.tools import call_tool, parse_tool_calls
from environments.users import STOP, User, UserError

INVALID_CALL = "invalid_tool_call"  # the name recorded for a <tool_call> block that did not parse


def reference_hash(domain: Domain, task: Task) -> str:
    """The state hash after replaying the task's reference actions on a fresh database."""
    db = domain.db.fresh()
    try:
        for action in task.evaluation_criteria.actions:
            call = {"id": action.action_id, "function": {"name": action.name,
                                                         "arguments": json.dumps(action.arguments)}}
            message, error = call_tool(domain.tools, db, call)
            if error:
                raise ValueError(f"task {task.id}: reference action {action.action_id} ({action.name}) fails: "
                                 f"{message['content']}")
        return db.state_hash()
    finally:
        db.close()


def _action_done(action: Action, calls: list[dict[str, Any]]) -> bool:
    keys = action.compare_args if action.compare_args is not None else list(action.arguments)
    for call in calls:
        if call["name"] == action.name and all(call["arguments"].get(k) == action.arguments.get(k) for k in keys):
            return True
    return False


def evaluate(task: Task, db: MockDatabase, expected_hash: str, messages: list[dict[str, Any]],
             calls: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """(reward, checks) of a finished episode; ``calls`` are the successful tool calls with parsed arguments."""
    criteria = task.evaluation_criteria
    checks: dict[str, Any] = {}
    for basis in task.supported_basis:
        if basis == "DB":
            checks["DB"] = db.state_hash() == expected_hash
        elif basis == "ACTION":
            missing = [a.action_id for a in criteria.actions if a.requestor == "assistant"
                       and not _action_done(a, calls)]
            checks["ACTION"] = not missing
            checks["ACTION_missing"] = missing
        elif basis == "COMMUNICATE":
            said = " ".join(m.get("content") or "" for m in messages if m["role"] == "assistant").lower()
            missing_info = [s for s in criteria.communicate_info if s.lower() not in said]
            checks["COMMUNICATE"] = not missing_info
            checks["COMMUNICATE_missing"] = missing_info
    checks["unsupported"] = task.unsupported_basis
    reward = 1.0
    for basis in task.supported_basis:
        reward *= float(checks[basis])
    return reward, checks


def pass_hat_k(successes_per_task: list[list[bool]], k: int) -> float:
    """tau-bench's pass^k: mean over tasks of C(c, k) / C(n, k) (n trials, c successes per task)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not successes_per_task:
        raise ValueError("pass_hat_k needs at least one task")
    total = 0.0
    for index, trials in enumerate(successes_per_task):
        if len(trials) < k:
            raise ValueError(f"task #{index} has {len(trials)} trials, fewer than k={k}")
        total += comb(sum(bool(t) for t in trials), k) / comb(len(trials), k)
    return total / len(successes_per_task)


class Environment:
    """One episode at a time over ``domain``; ``user_factory()`` makes the simulated user of each episode."""

    def __init__(self, domain: Domain, user_factory: Callable[[], User], max_steps: int = 30,
                 tools_in_prompt: bool = True):
        self.domain, self.user_factory, self.max_steps = domain, user_factory, max_steps
        self.tools_in_prompt = tools_in_prompt  # False: the policy's chat template renders the tools itself
        self.task: Task | None = None
        self.db: MockDatabase | None = None
        self.messages: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.errors: Counter[str] = Counter()
        self.steps = 0
        self.done = False
        self._expected_hash = ""
        self._user: User | None = None

    def reset(self, task: Task | str) -> list[dict[str, Any]]:
        self.task = self.domain.task(task) if isinstance(task, str) else task
        if self.db is not None:
            self.db.close()
        self.db = self.domain.db.fresh()
        self._expected_hash = reference_hash(self.domain, self.task)
        self.calls, self.errors, self.steps, self.done = [], Counter(), 0, False
        close = getattr(self._user, "close", None)  # an LLMUser holds an HTTP client
        if close:
            close()
        self._user = self.user_factory()
        self.messages = [{"role": "system", "content": self.domain.system_prompt(tools=self.tools_in_prompt)},
                         {"role": "user", "content": self._user.start(self.task)}]
        return list(self.messages)

    def _assistant_message(self, message: str | dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The OpenAI assistant message, and the parse error of each malformed <tool_call> block by call id.

        A malformed block stays in the trajectory as a call of ``invalid_tool_call`` (its raw text as the
        argument), so that its ``Error:`` tool message answers a call id, as chat templates expect.
        """
        if isinstance(message, dict):
            if message.get("tool_calls"):
                return {"role": "assistant", "content": message.get("content") or "",
                        "tool_calls": message["tool_calls"]}, {}
            message = message.get("content") or ""
        parsed = parse_tool_calls(message, id_prefix=f"call_{self.steps}")
        tool_calls, errors = list(parsed.tool_calls), {}
        for index, error in enumerate(parsed.errors):
            call_id = f"call_{self.steps}_invalid_{index}"
            errors[call_id] = error["error"]
            tool_calls.append({"id": call_id, "type": "function",
                               "function": {"name": INVALID_CALL, "arguments": json.dumps({"raw": error["raw"]})}})
        out: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if tool_calls:
            out["tool_calls"] = tool_calls
        return out, errors

    def _run_tools(self, assistant: dict[str, Any], parse_errors: dict[str, str]
                   ) -> tuple[list[dict[str, Any]], bool]:
        """The tool messages of the assistant's calls, and whether a terminal tool ran."""
        observation, terminal = [], False
        for call in assistant["tool_calls"]:
            if call.get("id") in parse_errors:
                self.errors["parse_error"] += 1
                observation.append({"role": "tool", "tool_call_id": call["id"],
                                    "content": f"Error: {parse_errors[call['id']]}"})
                continue
            result, error = call_tool(self.domain.tools, self.db, call)
            observation.append(result)
            if error:
                self.errors[error] += 1
                continue
            name = call["function"]["name"]
            self.calls.append({"name": name, "arguments": json.loads(call["function"]["arguments"] or "{}")})
            terminal = terminal or name in self.domain.terminal_tools
        return observation, terminal

    def step(self, assistant_message: str | dict[str, Any]) -> tuple[list[dict[str, Any]], float, bool, bool,
                                                                      dict[str, Any]]:
        if self.task is None or self._user is None:
            raise RuntimeError("Environment.step called before reset(task)")
        if self.done:
            raise RuntimeError(f"task {self.task.id}: the episode is over; call reset(task)")
        self.steps += 1
        assistant, parse_errors = self._assistant_message(assistant_message)
        self.messages.append(assistant)
        end_reason = user_failure = None
        if assistant.get("tool_calls"):
            observation, terminal = self._run_tools(assistant, parse_errors)
            if terminal:
                end_reason = "transfer"
        else:
            try:
                reply = self._user.respond(assistant["content"])
                observation = [{"role": "user", "content": reply}]
                if STOP in reply:
                    end_reason = "user_stop"
            except UserError as exc:
                observation, user_failure = [], f"user_error: {exc}"
        self.messages.extend(observation)
        terminated = end_reason is not None
        truncated = not terminated and (user_failure is not None or self.steps >= self.max_steps)
        if truncated:
            end_reason = user_failure or "max_steps"
        self.done = terminated or truncated
        reward, checks = 0.0, {}
        if terminated:
            reward, checks = evaluate(self.task, self.db, self._expected_hash, self.messages, self.calls)
        info = {"task_id": self.task.id, "steps": self.steps, "end_reason": end_reason, "reward": reward,
                "checks": checks, "tool_errors": dict(self.errors), "tool_calls": list(self.calls),
                "trajectory": list(self.messages)}
        return observation, reward, terminated, truncated, info
