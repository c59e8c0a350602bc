"""What a judge's reply must be to count as a score, and why a row's verdict is missing when it does not.

A verdict is exactly one JSON object ``{"data_id", "score", "reasons"}``: the ``data_id`` must echo the data block's
id, the score must be a finite number (not a string, a boolean, NaN or infinity) inside the rubric's
``score_range``. Every rejection and every failed request carries a short **reason** (``score_out_of_range``,
``timeout``, ``unreachable``, ``http_503``...): the judge counts missing verdicts by reason
(``JudgeStats.missing_reasons``, ``missing_<reason>`` in the score stage's ``judge_counts``), and the score stage
retries only the transient ones (the endpoint down, slow or overloaded), never a judge that answers garbage.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from flywheel.rewards.judge_http import RETRYABLE

TRANSIENT = {"unreachable", "timeout", "connection_error"} | {f"http_{code}" for code in RETRYABLE}


class VerdictRejected(ValueError):
    """A reply that is no valid verdict; ``reason`` names the defect (``not_json``, ``score_out_of_range``...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class JudgeError(RuntimeError):
    """The judge could not give a valid verdict (after retries and the repair request).

    ``reason`` says why (a ``VerdictRejected`` reason, ``unreachable``, ``timeout``, ``http_<status>``,
    ``bad_response``, ``budget_spent``); ``transient`` whether a later retry of the stage may succeed.
    """

    def __init__(self, message: str, reason: str = "error"):
        super().__init__(message)
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT


class JudgeBudgetError(JudgeError):
    """The night's token budget (``rewards.judge.budget_tokens``) is spent and ``on_failure`` is ``fail``."""

    def __init__(self, message: str, reason: str = "budget_spent"):
        super().__init__(message, reason)


def check_score(score: Any, low: float, high: float) -> None:
    """Raise ``VerdictRejected`` unless ``score`` is a finite number in ``[low, high]``.

    >>> check_score(10, 1, 10)
    >>> check_score(11, 1, 10)
    Traceback (most recent call last):
    ...
    flywheel.rewards.verdict.VerdictRejected: verdict score 11 is outside the rubric's range [1, 10]
    """
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise VerdictRejected("score_not_a_number", f"verdict score must be a finite number, got {score!r}")
    if not low <= score <= high:
        raise VerdictRejected("score_out_of_range",
                              f"verdict score {score} is outside the rubric's range [{low:g}, {high:g}]")


def valid_score(score: Any, low: float, high: float) -> bool:
    try:
        check_score(score, low, high)
    except VerdictRejected:
        return False
    return True


def parse_verdict(content: str, did: str, low: float, high: float) -> tuple[float, list[str]]:
    """The score from a structured verdict only; raises ``VerdictRejected`` saying what is wrong.

    >>> parse_verdict('{"data_id": "x1", "score": 4, "reasons": ["clear"]}', "x1", 1, 5)
    (4.0, ['clear'])
    """
    text = (content or "").strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        verdict = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise VerdictRejected("not_json", f"verdict is not one JSON object: {e}") from None
    if not isinstance(verdict, dict):
        raise VerdictRejected("not_an_object", "verdict must be a JSON object")
    if verdict.get("data_id") != did:
        raise VerdictRejected("wrong_data_id", f"verdict data_id must be {did!r}, got {verdict.get('data_id')!r}")
    score = verdict.get("score")
    check_score(score, low, high)
    reasons = verdict.get("reasons", [])
    reasons = [reasons] if isinstance(reasons, str) else reasons
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise VerdictRejected("bad_reasons", "verdict reasons must be a list of strings")
    return float(score), reasons


def transport_reason(exc: Exception) -> str:
    """``timeout``, ``unreachable`` (nothing listening, DNS) or ``connection_error`` (reset, protocol error)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "unreachable"
    return "connection_error"


def redact_url(url: str) -> str:
    """The endpoint as it may appear in a message: no user, password, query or fragment (they can hold keys).

    >>> redact_url("https://user:sk-secret@judge.example/v1/chat/completions?api-key=sk-2")
    'https://judge.example/v1/chat/completions'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
