"""Production agent transcripts for the built-in ``acme_shop`` environment, in demo/logs.py's interaction-log format.

The production agent is the reference behaviour with production mistakes: each conversation plays a TRAIN-split task
of ``environments.acme_shop`` through ``environments.env.Environment`` with a ``ScriptedUser``. The agent makes the
task's reference tool calls, one per turn, then closes with the ``communicate_info`` strings, as
``environments.collect.ReferencePolicy`` does, but with probability ``error_rate`` a conversation carries one mistake
(``MISTAKES``): a wrong digit in an id argument, a skipped reference call, a write the policy forbids (a refund over
the limit instead of the hand-off, or a refund nobody asked for), the closing message without the information asked
for, or a needless hand-off to a human. The closing message states only what the agent could know: an info string
found in a tool result, or any info once every reference call succeeded (a total computed from a listing), so a
skipped or mistyped lookup leaves the answer out. The environment's reward decides what went right, never a label.

``generate_agent_logs(out_dir, ...)`` writes, as a capture gateway logs each chat completion, one row per model call
under ``<out>/dt=YYYY-MM-DD/part-*.jsonl``: ``messages`` is the OpenAI conversation before that assistant turn (system
prompt, user, assistant turns with ``tool_calls``, ``tool`` messages with ``tool_call_id``), ``completion`` the turn
as the model wrote it (``<tool_call>`` blocks or the closing text: what ``models.tiny.CHAT_TEMPLATE`` renders for
it). The conversation's feedback is on each of its rows: ``resolved`` (reward 1 and no hand-off), ``escalated`` (the
hand-off tool ran) and, sparsely, ``thumbs``. Some customers open in a style (``STYLE_RATES``: impatient or
panicked), as real users do, so ``environments.user_styles`` finds style examples for the LLM user in these logs.
Per conversation, ``<out>/_gold/<day>.jsonl`` holds the task id, the mistake, the reward, the checks and the user's
style, outside the partitions, so observe never reads them. The rows have no line-level defects (demo/logs.py covers
those).
"""
from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from environments.acme_shop import load_domain
from environments.domain import Domain
from environments.env import Environment
from environments.tasks import Task
from environments.users import ScriptedUser

TASK = "acme_shop_agent"                 # the logged ``task`` field
MODEL_VERSION = "acme-agent-2026-11-20"  # the logged ``model_version`` field
MISTAKES = ("wrong_id", "skipped_call", "forbidden_write", "forgot_info", "needless_escalation")
HANDOFF = "escalate_to_human"
THUMBS_RATE = 0.3                        # share of conversations whose customer gave a thumb
# Customers write in a style now and then (what ``environments.user_styles`` finds in real logs and hands the LLM
# user as examples): an impatient or a panicked opening. Drawn from their own random stream, so the conversations,
# mistakes and feedback of a seed do not depend on it.
STYLE_RATES = {"impatient": 0.15, "panicked": 0.1}
STYLE_OPENERS = {
    "impatient": ("I've been waiting for days already!!", "Still no answer, come on.", "Hurry please, how long "
                  "does this take?", "Any update? I asked yesterday already."),
    "panicked": ("URGENT!!! PLEASE HELP ME NOW!", "Help me! This is an emergency.", "SOS, I need this sorted "
                 "asap.", "Please, urgent, I'm panicking here!!!"),
}
PARTS_PER_DAY = 2
Call = tuple[str, dict[str, Any]]


@dataclass
class AgentPlan:
    """What the production agent does in one conversation: its tool calls in order, then its closing message."""

    calls: list[Call]
    say_info: bool = True                # the closing message states what the customer asked for
    mistake: str | None = None


@dataclass
class AgentLogSummary:
    """What ``generate_agent_logs`` wrote; ``success_rate_by_day`` is the share of reward-1 conversations."""

    task: str
    out_dir: str
    days: list[str]
    conversations: int
    rows: int                            # lines in the partitions: one per model call
    objects: int
    successes: int                       # episodes with reward 1
    resolved: int                        # reward 1 and not handed off
    escalated: int
    mistakes: dict[str, int]             # kind -> conversations
    success_rate_by_day: dict[str, float] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return self.successes / self.conversations if self.conversations else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "success_rate": round(self.success_rate, 4)}


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """One ``<tool_call>`` block, exactly as ``ReferencePolicy`` writes it and the tiny template renders it."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _order_ids(calls: list[Call]) -> list[str]:
    return [args["order_id"] for _, args in calls if "order_id" in args]


def _wrong_digit(rng: random.Random, value: str) -> str:
    i = rng.choice([i for i, c in enumerate(value) if c.isdigit()])
    return value[:i] + rng.choice([d for d in "0123456789" if d != value[i]]) + value[i + 1:]


def _mistaken(rng: random.Random, plan: AgentPlan, kind: str, info: list[str]) -> AgentPlan | None:
    """``plan`` with one mistake of ``kind``, or None when the task gives that mistake no chance."""
    calls, orders = list(plan.calls), _order_ids(plan.calls)
    if kind == "wrong_id":
        slots = [(i, k) for i, (_, args) in enumerate(calls) for k, v in args.items()
                 if k.endswith("_id") and isinstance(v, str) and any(c.isdigit() for c in v)]
        if not slots:
            return None
        i, key = rng.choice(slots)
        calls[i] = (calls[i][0], {**calls[i][1], key: _wrong_digit(rng, calls[i][1][key])})
    elif kind == "skipped_call":
        if not calls:
            return None
        del calls[rng.randrange(len(calls))]
    elif kind == "forbidden_write":
        handoffs = [i for i, (name, _) in enumerate(calls) if name == HANDOFF]
        if handoffs:      # over the refund limit: refund anyway instead of handing off
            i = handoffs[0]
            calls[i] = ("refund_order", {"order_id": calls[i][1]["order_id"], "reason": "other"})
        elif orders:      # a refund the customer never asked for
            calls.append(("refund_order", {"order_id": orders[-1], "reason": "other"}))
        else:
            return None
    elif kind == "forgot_info":
        if not info:
            return None
        return AgentPlan(calls, say_info=False, mistake=kind)
    elif kind == "needless_escalation":
        if not orders or any(name == HANDOFF for name, _ in calls):
            return None
        calls = calls[:rng.randint(1, len(calls))] + [(HANDOFF, {"order_id": orders[0],
                                                                  "summary": "customer needs help with an order"})]
    else:
        raise ValueError(f"unknown mistake {kind!r}; known: {', '.join(MISTAKES)}")
    return AgentPlan(calls, mistake=kind)


def production_plan(rng: random.Random, task: Task, error_rate: float) -> AgentPlan:
    """The reference calls of ``task``, with one mistake (among those the task allows) with ``error_rate``."""
    criteria = task.evaluation_criteria
    plan = AgentPlan([(a.name, dict(a.arguments)) for a in criteria.actions if a.requestor == "assistant"])
    if rng.random() >= error_rate:
        return plan
    kinds = list(MISTAKES)
    rng.shuffle(kinds)
    for kind in kinds:
        mistaken = _mistaken(rng, plan, kind, criteria.communicate_info)
        if mistaken is not None:
            return mistaken
    return plan


def closing_message(env: Environment, task: Task, plan: AgentPlan) -> str:
    """The agent's last message: the info it could know (seen in a tool result, or every reference call done)."""
    said: list[str] = []
    if plan.say_info:
        seen = " ".join(m["content"] or "" for m in env.messages if m["role"] == "tool").lower()
        criteria = task.evaluation_criteria
        complete = all({"name": a.name, "arguments": a.arguments} in env.calls for a in criteria.actions)
        said = [s for s in criteria.communicate_info if complete or s.lower() in seen]
    return " ".join(["All done.", *said, "Have a nice day."])


class StyledUser(ScriptedUser):
    """The scripted customer, whose opening message starts with ``opener`` (a styled sentence) when one is given."""

    def __init__(self, opener: str | None = None, max_turns: int = 5):
        super().__init__(max_turns)
        self.opener = opener

    def start(self, task: Task) -> str:
        text = super().start(task)
        return f"{self.opener} {text}" if self.opener else text


def draw_style(rng: random.Random) -> tuple[str | None, str | None]:
    """(style, opening sentence) of one customer, or (None, None) for a plain one."""
    u = rng.random()
    for style, rate in STYLE_RATES.items():
        if u < rate:
            return style, rng.choice(STYLE_OPENERS[style])
        u -= rate
    return None, None


def play(env: Environment, task: Task, plan: AgentPlan) -> tuple[list[tuple[list[dict], str]], dict[str, Any]]:
    """Run one conversation; returns (messages before the turn, completion) per model call, and the last info."""
    env.reset(task)
    pending, turns = list(plan.calls), []
    while True:
        text = call_text(*pending.pop(0)) if pending else closing_message(env, task, plan)
        turns.append((json.loads(json.dumps(env.messages)), text))
        _, _, terminated, truncated, info = env.step(text)
        if terminated or truncated:
            return turns, info


def _feedback(rng: random.Random, info: dict[str, Any]) -> dict[str, Any]:
    """Per conversation: resolved (reward 1, no hand-off), escalated (hand-off ran), a thumb from some customers."""
    escalated = any(call["name"] == HANDOFF for call in info["tool_calls"])
    resolved = info["reward"] == 1.0 and not escalated
    feedback: dict[str, Any] = {"resolved": resolved, "escalated": escalated}
    if rng.random() < THUMBS_RATE and (resolved or info["reward"] < 1.0):  # a proper hand-off gets no thumb
        feedback["thumbs"] = 1 if resolved else -1
    return feedback


def _conversation_rows(rng: random.Random, day: dt.date, conversation_id: str, turns: list[tuple[list[dict], str]],
                       feedback: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a gateway logged for one conversation (request ids are set once the day is sorted)."""
    at = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(seconds=rng.randrange(86400 - 3600))
    rows = []
    for index, (messages, completion) in enumerate(turns):
        latency = int(rng.lognormvariate(6.2, 0.4))
        at += dt.timedelta(milliseconds=latency + (rng.randint(5_000, 40_000) if messages[-1]["role"] == "user"
                                                   else 0))
        rows.append({"request_id": None, "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "task": TASK,
                     "model_version": MODEL_VERSION, "messages": messages, "completion": completion,
                     "feedback": dict(feedback), "latency_ms": latency,
                     "metadata": {"conversation_id": conversation_id, "turn": index, "channel": "chat",
                                  "locale": "en-US"}})
    return rows


@dataclass
class _Day:
    rows: list[dict[str, Any]] = field(default_factory=list)
    gold: list[dict[str, Any]] = field(default_factory=list)
    successes: int = 0


def _play_day(rng: random.Random, style_rng: random.Random, env: Environment, domain: Domain, day: dt.date,
              conversations: int, error_rate: float, counts: Counter) -> _Day:
    """One day's conversations: its rows sorted by time with request ids, its gold records and successes."""
    out, train = _Day(), domain.split["train"]
    for n in range(conversations):
        task = domain.task(rng.choice(train))
        plan = production_plan(rng, task, error_rate)
        style, opener = draw_style(style_rng)
        env.user_factory = lambda: StyledUser(opener)  # noqa: B023 - called by reset() inside this iteration
        turns, info = play(env, task, plan)
        feedback = _feedback(rng, info)
        conversation_id = f"conv-{day:%y%m%d}-{n:05d}"  # under 13 digits: the PII scrubber reads 13 as a card
        rows = _conversation_rows(rng, day, conversation_id, turns, feedback)
        out.rows += rows
        out.successes += info["reward"] == 1.0
        counts.update({"resolved": feedback["resolved"], "escalated": feedback["escalated"],
                       f"mistake:{plan.mistake}": plan.mistake is not None})
        out.gold.append({"conversation_id": conversation_id, "task_id": task.id, "mistake": plan.mistake,
                         "reward": info["reward"], "checks": info["checks"], "end_reason": info["end_reason"],
                         "tool_errors": info["tool_errors"], **feedback, "turns": len(turns), "user_style": style})
    out.rows.sort(key=lambda r: (r["timestamp"], r["metadata"]["conversation_id"], r["metadata"]["turn"]))
    for i, row in enumerate(out.rows):
        row["request_id"] = f"agent-{day:%Y%m%d}-{i:07d}"
    return out


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def generate_agent_logs(out_dir: str | Path, *, days: int = 3, conversations_per_day: int = 200,
                        start: str | dt.date | None = None, seed: int = 0, error_rate: float = 0.35
                        ) -> AgentLogSummary:
    """Write ``days`` partitions of production acme_shop agent calls under ``out_dir`` (see the module docstring).

    ``start`` defaults to ``days`` days before today (UTC), so the newest partition is yesterday and no timestamp is
    in the future. Deterministic for a ``seed``: the same arguments write the same bytes.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate: must be in [0, 1], got {error_rate}")
    if days < 1 or conversations_per_day < 1:
        raise ValueError(f"days and conversations_per_day: must be >= 1, got {days} and {conversations_per_day}")
    if start is None:
        first = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    else:
        first = start if isinstance(start, dt.date) else dt.date.fromisoformat(str(start))
    out, rng, style_rng, counts = Path(out_dir), random.Random(seed), random.Random(f"{seed}-style"), Counter()
    domain = load_domain()
    env = Environment(domain, StyledUser)
    day_list = [first + dt.timedelta(days=d) for d in range(days)]
    rates, rows, successes = {}, 0, 0
    try:
        for day in day_list:
            played = _play_day(rng, style_rng, env, domain, day, conversations_per_day, error_rate, counts)
            bounds = [round(p * len(played.rows) / PARTS_PER_DAY) for p in range(PARTS_PER_DAY + 1)]
            for p in range(PARTS_PER_DAY):
                part = out / f"dt={day.isoformat()}" / f"part-{p:05d}.jsonl"
                _write_jsonl(part, played.rows[bounds[p]:bounds[p + 1]])
            _write_jsonl(out / "_gold" / f"{day.isoformat()}.jsonl", played.gold)
            rates[day.isoformat()] = round(played.successes / conversations_per_day, 4)
            rows, successes = rows + len(played.rows), successes + played.successes
    finally:
        if env.db is not None:
            env.db.close()
        domain.db.close()
    return AgentLogSummary(
        task=TASK, out_dir=str(out), days=[d.isoformat() for d in day_list], conversations=days * conversations_per_day,
        rows=rows, objects=days * PARTS_PER_DAY, successes=successes,
        resolved=counts["resolved"], escalated=counts["escalated"],
        mistakes={k.split(":", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("mistake:") and n},
        success_rate_by_day=rates)


def load_agent_gold(out_dir: str | Path) -> list[dict]:
    """Every conversation's gold record: conversation_id, task_id, mistake, reward, checks, end_reason, feedback."""
    return [orjson.loads(line) for f in sorted(Path(out_dir, "_gold").glob("*.jsonl"))
            for line in f.read_bytes().splitlines() if line]
