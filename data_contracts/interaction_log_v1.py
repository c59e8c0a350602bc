"""Contract v1 of the interaction log (one JSON object per model call) as a Great Expectations 1.x suite.

Validate runs the suite on a check frame built from the raw snapshot (one row per decoded log line):

    request_id_key, request_id_chars             dictionary code of the id (equal ids, equal keys), its length
    timestamp, task, model_version               the fields themselves
    completion_chars, comment_chars              lengths (null = field missing)
    messages_count, message_max_chars            facts about `messages` (null = missing or not a chat)
    message_roles                                sorted distinct roles, comma-joined ("system,user")
    thumbs, latency_ms                           feedback / latency values

Each expectation's ``meta["check"]`` is the reason written into quarantine records (``missing:completion``,
``range:thumbs``, ...). Type errors (``type:<field>``), malformed lines (``malformed_json``, ``invalid_utf8``,
``not_an_object``) are found by the parser before the suite runs. A breaking change is a new module ``_v2``.
"""
from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from data_contracts.limits import Limits

NAME = "interaction_log_v1"
REQUIRED = ("request_id", "timestamp", "task", "model_version", "messages", "completion")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
EARLIEST = "2000-01-01T00:00:00+00:00"
MAX_LATENCY_MS = 3_600_000
MAX_ID_CHARS = 256


def build_suite(limits: Limits | None = None, now: str | None = None) -> gx.ExpectationSuite:
    """The suite; ``now`` (ISO, UTC) bounds timestamps: later than now + ``limits.max_future_seconds`` fails."""
    import datetime as dt

    limits = limits or Limits()
    now_ts = dt.datetime.fromisoformat(now) if now else dt.datetime.now(dt.UTC)
    latest = now_ts + dt.timedelta(seconds=limits.max_future_seconds)
    roles = "|".join(ROLES)

    def check(name: str, expectation):
        expectation.meta = {"check": name}
        return expectation

    expectations = [
        check("missing:request_id", gxe.ExpectColumnValuesToNotBeNull(column="request_id_key")),
        check("missing:timestamp", gxe.ExpectColumnValuesToNotBeNull(column="timestamp")),
        check("missing:task", gxe.ExpectColumnValuesToNotBeNull(column="task")),
        check("missing:model_version", gxe.ExpectColumnValuesToNotBeNull(column="model_version")),
        check("missing:messages", gxe.ExpectColumnValuesToNotBeNull(column="messages_count")),
        check("missing:completion", gxe.ExpectColumnValuesToNotBeNull(column="completion_chars")),
        check("duplicate:request_id", gxe.ExpectColumnValuesToBeUnique(column="request_id_key")),
        check("length:request_id", gxe.ExpectColumnValuesToBeBetween(
            column="request_id_chars", min_value=1, max_value=MAX_ID_CHARS)),
        check("range:timestamp", gxe.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=dt.datetime.fromisoformat(EARLIEST), max_value=latest)),
        check("range:messages", gxe.ExpectColumnValuesToBeBetween(
            column="messages_count", min_value=1, max_value=limits.max_messages)),
        check("length:messages", gxe.ExpectColumnValuesToBeBetween(
            column="message_max_chars", min_value=0, max_value=limits.max_message_chars)),
        check("range:role", gxe.ExpectColumnValuesToMatchRegex(
            column="message_roles", regex=rf"^(?:{roles})(?:,(?:{roles}))*$")),
        check("length:completion", gxe.ExpectColumnValuesToBeBetween(
            column="completion_chars", min_value=0, max_value=limits.max_completion_chars)),
        check("length:comment", gxe.ExpectColumnValuesToBeBetween(
            column="comment_chars", min_value=0, max_value=limits.max_message_chars)),
        check("range:thumbs", gxe.ExpectColumnValuesToBeInSet(column="thumbs", value_set=[-1, 0, 1])),
        check("range:latency_ms", gxe.ExpectColumnValuesToBeBetween(
            column="latency_ms", min_value=0, max_value=MAX_LATENCY_MS)),
    ]
    return gx.ExpectationSuite(name=NAME, expectations=expectations)
