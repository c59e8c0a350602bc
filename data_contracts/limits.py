"""Bounds on one interaction that a contract enforces; ``validate.limits`` in the config takes its defaults here.

No Great Expectations import: the config reads these defaults without loading a suite.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_messages: int = 64  # messages in one interaction
    max_message_chars: int = 8000  # characters of one message's content (and of the feedback comment)
    max_completion_chars: int = 8000  # characters of the completion
    max_future_seconds: int = 300  # timestamps later than now + this are rejected
