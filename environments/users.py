"""Simulated users: a deterministic ``ScriptedUser`` for tests and the offline demo.

Design
------
A user has ``start(task) -> str`` (its opening message) and ``respond(agent_message) -> str`` (its reply to
one agent message without tool calls). The scripted user opens with the task's ``reason_for_call`` followed
by its ``known_info``. When the agent asks something (its message contains a ``?``), the user answers with
its ``known_info`` again (or says it knows nothing more). Any other agent message is taken
as the agent's final answer, and the user ends the conversation with tau2-bench's stop token
``###STOP###``; it also stops after ``max_turns`` replies, so an agent that only asks questions still ends.

``LLMUser`` plays the user with a model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM,
a hosted API, or ``flywheel.rewards.replay_server`` in tests). Roles are flipped for it: its system prompt is
the persona and instructions, the agent's messages are its ``user`` turns and its own replies are
``assistant`` turns (the conversation opens with the agent's greeting, as in tau2-bench). Any failure (HTTP
error, timeout, a reply without text) raises ``UserError`` with the reason; the environment then ends the
episode as truncated with that reason, rather than scoring an agent against a broken user.
"""
from __future__ import annotations

from typing import Any, Protocol

import httpx

from environments.tasks import Task

STOP = "###STOP###"
GREETING = "Hi! How can I help you today?"
LLM_USER_PROMPT = """You are a customer talking to a customer support agent. Play this customer faithfully.
{persona}
Your instructions:
{instructions}

Say only what the customer would say, one message at a time, and never invent facts you were not given.
When your request is handled (or cannot be), reply with exactly {stop} and nothing else."""


class UserError(RuntimeError):
    """The simulated user could not produce a turn (its endpoint failed); the episode ends with this reason."""


class User(Protocol):
    def start(self, task: Task) -> str: ...

    def respond(self, agent_message: str) -> str: ...


class ScriptedUser:
    """Deterministic user turns from a task's instructions."""

    def __init__(self, max_turns: int = 5):
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        self.max_turns = max_turns
        self._task: Task | None = None
        self._turns = 0

    def start(self, task: Task) -> str:
        self._task = task
        self._turns = 0
        instructions = task.user_scenario.instructions
        parts = [instructions.reason_for_call or instructions.task_instructions, instructions.known_info or ""]
        return " ".join(p.strip() for p in parts if p and p.strip())

    def respond(self, agent_message: str) -> str:
        if self._task is None:
            raise RuntimeError("ScriptedUser.respond called before start(task)")
        self._turns += 1
        if self._turns >= self.max_turns or "?" not in agent_message:
            return STOP
        known = self._task.user_scenario.instructions.known_info
        if known:  # already in the opening message
            return f"As I said: {known}"
        return "I don't have any more information than that."


def _instructions_text(task: Task) -> str:
    ins = task.user_scenario.instructions
    parts = [("Reason for the call", ins.reason_for_call), ("What you know", ins.known_info),
             ("What you do not know", ins.unknown_info), ("How to behave", ins.task_instructions)]
    return "\n".join(f"- {label}: {text}" for label, text in parts if text)


class LLMUser:
    """A user simulated by a chat model over an OpenAI-compatible endpoint (``base_url`` ends in ``/v1``)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_turns: int = 10, temperature: float = 0.0, client: httpx.Client | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_turns, self.temperature = model, max_turns, temperature
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self.messages: list[dict[str, Any]] = []
        self._turns = 0

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def _complete(self) -> str:
        body = {"model": self.model, "messages": self.messages, "temperature": self.temperature}
        try:
            response = self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise UserError(f"user model request to {self.url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise UserError(f"user model at {self.url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UserError(f"user model at {self.url} sent no choices[0].message.content") from exc
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"user model at {self.url} sent an empty reply")
        self.messages.append({"role": "assistant", "content": content})
        return content.strip()

    def start(self, task: Task) -> str:
        persona = f"Your persona: {task.user_scenario.persona}" if task.user_scenario.persona else ""
        system = LLM_USER_PROMPT.format(persona=persona, instructions=_instructions_text(task), stop=STOP)
        self.messages = [{"role": "system", "content": system}, {"role": "user", "content": GREETING}]
        self._turns = 0
        return self._complete()

    def respond(self, agent_message: str) -> str:
        if not self.messages:
            raise RuntimeError("LLMUser.respond called before start(task)")
        self._turns += 1
        if self._turns >= self.max_turns:
            return STOP
        self.messages.append({"role": "user", "content": agent_message})
        return self._complete()
