"""Small pieces: doctests of the gateway modules, the SSE accumulator on awkward chunking, the feedback fold."""
from __future__ import annotations

import doctest

import orjson
import pandas as pd
import pytest

from flywheel import feedback
from flywheel.gateway import monitor, routing, rows
from flywheel.gateway.rows import BadRequest, StreamAccumulator, feedback_events


@pytest.mark.parametrize("module", [feedback, monitor, routing, rows])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events) + b"data: [DONE]\r\n\r\n"


def test_the_accumulator_survives_any_chunking_and_crlf():
    stream = sse({"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                 {"choices": [{"index": 0, "delta": {"content": "lo"}}, {"index": 1, "delta": {"content": "x"}}]},
                 {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {
                     "name": "lookup", "arguments": '{"id": '}}]}}]},
                 {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "7}"}}]},
                               "finish_reason": "tool_calls"}], "usage": {"completion_tokens": 3}})
    for size in (1, 3, 7, len(stream)):
        acc, done = StreamAccumulator(), []
        for i in range(0, len(stream), size):
            done.append(acc.feed(stream[i:i + size]))
        assert done.count(True) >= 1 and done[-1] is True
        assert acc.content == "Hello" and acc.finish_reason == "tool_calls" and acc.usage == {"completion_tokens": 3}
        assert acc.tool_calls == [{"id": "c1", "type": "function",
                                   "function": {"name": "lookup", "arguments": '{"id": 7}'}}]
    assert rows.completion_text(acc.content, acc.tool_calls) == \
        'Hello\n<tool_call>\n{"name":"lookup","arguments":{"id":7}}\n</tool_call>'


@pytest.mark.parametrize("body, message", [
    ({"request_id": "r", "thumbs": True}, "body.thumbs: must be -1, 0 or 1"),
    ({"request_id": "r", "resolved": "yes"}, "body.resolved: must be true or false"),
    ({"request_id": "r"}, "body: no feedback"),
    ({"thumbs": 1}, "body.request_id: expected a string"),
    ({"request_id": "r", "kpi": {"csat": "great"}}, "body.kpi.csat: must be a number or a boolean"),
    ({"request_id": "r", "resolved": True, "timestamp": "2026-11-24T10:00:00"}, "body.timestamp: needs a timezone"),
    ({"events": [{"request_id": "r", "thumbs": 1}, {"request_id": "r", "edited": 1}]}, "events[1].edited"),
    ({"events": []}, "events: expected a non-empty list"),
    ({"events": [], "extra": 1}, "a batch is"),
])
def test_bad_feedback_names_the_field(body, message):
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        feedback_events(body)


def test_the_fold_takes_the_latest_value_of_each_field_and_the_join_keeps_the_rest():
    events = pd.DataFrame([
        {"event_id": "e1", "request_id": "a", "received_at": "2026-11-25T00:00:00Z",
         "timestamp": "2026-11-25T00:00:00Z", "thumbs": 1, "resolved": True, "kpi": None},
        {"event_id": "e2", "request_id": "a", "received_at": "2026-11-28T00:00:00Z",
         "timestamp": "2026-11-28T00:00:00Z", "thumbs": None, "resolved": False, "kpi": '{"csat": 2}'},
        {"event_id": "e3", "request_id": "b", "received_at": "2026-11-26T00:00:00Z",
         "timestamp": "2026-11-26T00:00:00Z", "thumbs": -1, "resolved": None, "kpi": None}])
    table = feedback.fold_events(events).set_index("request_id")
    assert table.loc["a", "thumbs"] == 1 and not table.loc["a", "resolved"] and table.loc["a", "kpi_csat"] == 2
    snapshot = pd.DataFrame({"request_id": ["a", "b", "c"], "thumbs": pd.array([None, None, 1], "Int8"),
                             "escalated": pd.array([True, None, None], "boolean")})
    joined, n = feedback.join_feedback(snapshot, table.reset_index())
    assert n == 2
    assert joined["thumbs"].tolist() == [1, -1, 1] and joined["escalated"].tolist()[0] is True
    assert pd.isna(joined.loc[2, "kpi_csat"]) and joined.loc[0, "kpi_csat"] == 2
