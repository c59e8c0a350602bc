"""Client-side limits of the LLM judge (requests and tokens per minute, the night's token budget) and its counts.

* **Rate limits** (``max_requests_per_minute``, ``max_tokens_per_minute``) pace requests like a token bucket that
  holds one request's worth (GCRA): a request may start when both buckets are back to full, and its cost pushes the
  next start by ``cost · 60 / limit`` seconds. Requests are thus spread evenly, so no window of a minute ever holds
  more than the limit (plus the one request in progress). Every HTTP attempt counts, retries and repairs included.
* **Tokens** are what the endpoint's ``usage`` says (``prompt_tokens`` + ``completion_tokens``); an endpoint that sends
  no usage is estimated at characters / 4 (message contents in, answer out). Before a request is answered its cost
  is unknown, so it is charged ``estimate(prompt) + max_tokens`` up front (what hosted APIs count against a limit)
  and settled with the real count when the answer arrives (a refund, or a debt the next requests wait off).
* **Budget** (``budget_tokens``, per night = per judge client of a stage run): a request starts only when the tokens
  spent, those reserved by requests in flight and its own up-front charge fit in the budget; when one does not fit
  once the requests in flight have settled, the budget is closed for the night and every later request is refused
  (``BudgetExhausted``). Failed attempts (no answer) cost no tokens.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def estimate_tokens(text: str) -> int:
    """Characters / 4 (rounded up): the estimate used when an endpoint reports no ``usage``.

    >>> estimate_tokens(""), estimate_tokens("abcd"), estimate_tokens("abcde")
    (0, 1, 2)
    """
    return (len(text) + 3) // 4


def prompt_tokens(messages: list[dict]) -> int:
    """Estimated tokens of a chat request: characters / 4 of every message's content."""
    return sum(estimate_tokens(str(m.get("content") or "")) for m in messages)


class BudgetExhausted(Exception):
    """The night's token budget cannot pay for another request (raised before the request is sent)."""


class Pace:
    """One bucket of ``per_minute`` units refilled continuously, holding one request's worth (GCRA)."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError(f"a rate limit must be > 0 per minute, got {per_minute}")
        self.seconds_per_unit = 60.0 / per_minute
        self.free_at = -float("inf")  # monotonic time from which the bucket is full again

    def push(self, start: float, cost: float) -> None:
        self.free_at = start + cost * self.seconds_per_unit

    def settle(self, delta: float) -> None:
        """The real cost differed from the charge by ``delta`` units (negative = a refund)."""
        self.free_at += delta * self.seconds_per_unit


class RateLimiter:
    """Requests-per-minute and tokens-per-minute pacing (either may be None = unlimited)."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.requests = Pace(requests_per_minute) if requests_per_minute else None
        self.tokens = Pace(tokens_per_minute) if tokens_per_minute else None
        self.clock = clock
        self.waited_s = 0.0  # total time requests waited for a slot

    def reserve(self, tokens: int) -> float:
        """Book the next slot for a request charged ``tokens``; returns how long to wait before sending it."""
        now = self.clock()
        start = max([now] + [p.free_at for p in (self.requests, self.tokens) if p])
        if self.requests:
            self.requests.push(start, 1)
        if self.tokens:
            self.tokens.push(start, tokens)
        self.waited_s += start - now
        return start - now

    async def wait(self, tokens: int) -> None:
        delay = self.reserve(tokens)
        if delay > 0:
            await asyncio.sleep(delay)

    def settle(self, charged: int, used: int) -> None:
        if self.tokens:
            self.tokens.settle(used - charged)


class Budget:
    """The night's token budget (None = unlimited); see the module docstring for when a request may start."""

    def __init__(self, tokens: int | None):
        self.tokens = tokens
        self.spent = 0
        self.reserved = 0  # up-front charges of the requests in flight
        self.closed = False
        self._settled: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()  # each judge batch runs on its own event loop
        if self._settled is None or self._loop is not loop:
            self._settled, self._loop = asyncio.Condition(), loop
        return self._settled

    async def reserve(self, charge: int) -> None:
        """Reserve ``charge`` tokens or raise ``BudgetExhausted`` (waits for requests in flight to settle first)."""
        if self.tokens is None:
            return
        cond = self._condition()
        async with cond:
            while not self.closed:
                if self.spent + self.reserved + charge <= self.tokens:
                    self.reserved += charge
                    return
                if not self.reserved:
                    self.closed = True
                    break
                await cond.wait()
        raise BudgetExhausted(f"rewards.judge.budget_tokens: the night's judge budget of {self.tokens} tokens is "
                              f"spent ({self.spent} used; the next request would need up to {charge})")

    async def settle(self, charge: int, used: int) -> None:
        if self.tokens is None:
            return
        cond = self._condition()
        async with cond:
            self.reserved -= charge
            self.spent += used
            cond.notify_all()


@dataclass
class JudgeStats:
    requests: int = 0  # HTTP requests sent (retries and repairs included)
    cache_hits: int = 0
    prechecked: int = 0  # degenerate answers given the minimum without a request
    retries: int = 0  # attempts after the first of a request (429, 5xx, timeouts, connection errors)
    repairs: int = 0  # second requests after a malformed verdict
    failures: int = 0  # verdicts missing (or raised) after retries and the repair
    budget_missing: int = 0  # rows left missing because the night's token budget was spent
    tokens_in: int = 0  # prompt tokens (the endpoint's usage, else characters / 4)
    tokens_out: int = 0  # completion tokens (likewise)
    usage_estimated: int = 0  # answers without usage, whose tokens were estimated
    rate_limited_s: float = 0.0  # time requests waited for the requests/tokens-per-minute limits
    # verdicts missing (or raised) by reason (flywheel.rewards.verdict): timeout, unreachable, http_503,
    # not_json, score_out_of_range, budget_spent...; ``missing_<reason>`` in ``as_dict``
    missing_reasons: dict[str, int] = field(default_factory=dict)

    def note_missing(self, reason: str) -> None:
        self.missing_reasons[reason] = self.missing_reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, int | float]:
        """Flat counts (the score stage's ``judge_counts``): the fields, and ``missing_<reason>`` per reason."""
        out = {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()
               if k != "missing_reasons"}
        return out | {f"missing_{r}": n for r, n in sorted(self.missing_reasons.items())}
