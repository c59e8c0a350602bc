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

Two settings matter against a real server (found serving the tiny model with vLLM,
``tests/environments/test_llm_user_vllm.py``):
- every request sends ``max_tokens`` (default 256): without it vLLM lets a reply run to the end of the context
  window (the untrained tiny model's first reply took 478 of 512 tokens), so the next request is refused
  (HTTP 400, prompt longer than the maximum context length);
- ``fold_system=True`` sends the persona and instructions at the top of the first ``user`` turn instead of as a
  ``system`` message, for models whose chat template drops the system turn (the tiny model's, as Gemma's does)
  or rejects it: there the persona would otherwise never reach the model.

Style: ``LLMUser(style_examples=...)`` takes example turns per style (``environments.user_styles.style_examples``
picks them from real user turns in the interaction logs) and ``style`` names the episode's style; without
``style`` the task's persona may name one ("An impatient customer", ``user_styles.persona_style``). When both
are there, the instructions end with "Here is how real users write when they are <style>:" and the examples;
with no examples, no style, or no example of that style, the prompt is exactly the one without styles.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from environments.tasks import Task
from environments.user_styles import STYLES, persona_style, style_block

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


def user_system_prompt(task: Task, style: str | None = None, examples: Sequence[str] = ()) -> str:
    """The LLM user's instructions for ``task``: its persona, reason for the call, known / unknown information,
    how to behave, and the stop token; then, when ``style`` and ``examples`` are given, the style block."""
    persona = f"Your persona: {task.user_scenario.persona}" if task.user_scenario.persona else ""
    prompt = LLM_USER_PROMPT.format(persona=persona, instructions=_instructions_text(task), stop=STOP)
    block = style_block(style, examples)
    return f"{prompt}\n\n{block}" if block else prompt


class LLMUser:
    """A user simulated by a chat model over an OpenAI-compatible endpoint (``base_url`` ends in ``/v1``).

    ``max_tokens`` bounds each reply (``None`` leaves it to the server); ``fold_system`` puts the instructions in
    the first user turn for chat templates without a system turn (see the module docstring). ``style_examples``
    maps a style to real user turns; ``style`` is this user's style (None: the one the task's persona names, if
    any); the instructions show that style's examples.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_turns: int = 10, temperature: float = 0.0, client: httpx.Client | None = None,
                 max_tokens: int | None = 256, fold_system: bool = False,
                 style_examples: dict[str, list[str]] | None = None, style: str | None = None):
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (or None), got {max_tokens}")
        unknown = sorted({style, *(style_examples or {})} - {None, *STYLES})
        if unknown:
            raise ValueError(f"style: unknown style(s) {', '.join(map(repr, unknown))}; known: {', '.join(STYLES)}")
        self.style_examples, self.style = style_examples or {}, style
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_turns, self.temperature = model, max_turns, temperature
        self.max_tokens, self.fold_system = max_tokens, fold_system
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self.messages: list[dict[str, Any]] = []
        self._turns = 0

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def _complete(self) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
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

    def opening_messages(self, task: Task) -> list[dict[str, Any]]:
        """The first request's messages: the instructions (a system turn, or folded into the first user turn)
        and the agent's greeting."""
        style = self.style or persona_style(task.user_scenario.persona)
        system = user_system_prompt(task, style, self.style_examples.get(style, []) if style else [])
        if self.fold_system:
            return [{"role": "user", "content": f"{system}\n\n{GREETING}"}]
        return [{"role": "system", "content": system}, {"role": "user", "content": GREETING}]

    def start(self, task: Task) -> str:
        self.messages = self.opening_messages(task)
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
