"""The LLM judge client over real HTTP against a scripted OpenAI-compatible server on 127.0.0.1."""
import math
import threading
import time

import pytest

from flywheel.rewards.judge import JudgeClient, JudgeError, Rubric, VerdictCache, judge_grader, parse_verdict
from flywheel.rewards.replay_server import default_score

RUBRIC = Rubric("helpfulness", "Grade how helpful the answer is.", 1.0, 5.0)
P = [{"role": "user", "content": "Where is order 123456?"}]
ANSWER = '{"intent": "track_order", "order_id": "123456"}'


def client(server, **kw):
    kw.setdefault("backoff_s", 0.01)
    return JudgeClient(server.base_url, "judge-model", **kw)


def test_valid_verdict_scored_from_structured_json(replay):
    s = replay()
    v = client(s).judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score == default_score(ANSWER, 1, 5) and v.reasons == ["scripted"] and v.error is None
    body = s.requests[0]
    assert body["model"] == "judge-model" and body["response_format"] == {"type": "json_object"}
    assert "score_range" not in body["messages"][0]["content"] and "from 1 to 5" in body["messages"][0]["content"]


def test_malformed_then_repair_succeeds_with_one_extra_call(replay):
    s = replay(script=["malformed"])
    v = client(s).judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score is not None and s.calls == 2
    assert "invalid" in s.requests[1]["messages"][-1]["content"]  # the repair request says why


@pytest.mark.parametrize("bad", ["malformed", "out_of_range", "echo"])
def test_two_bad_verdicts_mean_missing_never_zero(replay, bad):
    s = replay(script=[bad, bad])
    c = client(s)
    v = c.judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score is None and "after one repair" in v.error and s.calls == 2
    assert math.isnan(judge_grader(client(replay(script=[bad, bad])), RUBRIC)([P], [ANSWER])[0])
    assert c.stats.failures == 1


def test_on_failure_fail_raises(replay):
    s = replay(script=["malformed", "malformed"])
    with pytest.raises(JudgeError, match="after one repair"):
        client(s, on_failure="fail").judge(RUBRIC, [P], [ANSWER])


def test_429_and_500_are_retried_with_backoff(replay):
    s = replay(script=["429", "500", "429"])
    c = client(s, backoff_s=0.05)
    t0 = time.perf_counter()
    v = c.judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score is not None and s.calls == 4
    assert time.perf_counter() - t0 >= 0.05 + 0.1 + 0.2  # 0.05 · (1 + 2 + 4): exponential


def test_retries_exhausted_is_a_recorded_failure(replay):
    s = replay(default="500")
    v = client(s, max_retries=2).judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score is None and "HTTP 500" in v.error and s.calls == 3


def test_timeout_is_retried(replay):
    s = replay(script=["slow"], slow_s=1.5)
    c = client(s, timeout_s=0.3)
    v = c.judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score is not None and s.calls == 2


def test_client_errors_are_not_retried(replay):
    c = JudgeClient("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_s=0.01, timeout_s=0.5)
    v = c.judge(RUBRIC, [P], [ANSWER])[0]
    assert v.score is None and ("ConnectError" in v.error or "Connect" in v.error) and c.stats.requests == 2


def test_degenerate_answers_never_reach_the_endpoint(replay):
    s = replay()
    vs = client(s).judge(RUBRIC, [P] * 4, ["", "...", "Thought process:", ANSWER])
    assert [v.score for v in vs[:3]] == [1.0, 1.0, 1.0] and all(v.precheck for v in vs[:3])
    assert s.calls == 1


def test_concurrency_limit_is_respected(replay):
    s = replay(latency_s=0.05)
    in_flight, peak, lock = [0], [0], threading.Lock()
    original = s.answer

    def counting(body, action):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return original(body, action)
    s.answer = counting
    answers = [f'{{"intent": "refund", "order_id": "{100000 + i}"}}' for i in range(24)]
    vs = client(s, concurrency=4).judge(RUBRIC, [P] * 24, answers)
    assert all(v.score is not None for v in vs)
    assert 2 <= peak[0] <= 4


def test_cache_rerun_makes_zero_calls(replay, tmp_path):
    s = replay()
    answers = [f'{{"intent": "refund", "order_id": "{200000 + i}"}}' for i in range(10)]
    first = client(s, cache=VerdictCache(tmp_path / "c.sqlite")).judge(RUBRIC, [P] * 10, answers)
    assert s.calls == 10
    c2 = client(s, cache=VerdictCache(tmp_path / "c.sqlite"))
    second = c2.judge(RUBRIC, [P] * 10, answers)
    assert s.calls == 10 and c2.stats.cache_hits == 10
    assert [v.score for v in first] == [v.score for v in second]
    # another rubric, model or parameter is another key
    c3 = JudgeClient(s.base_url, "judge-model", temperature=0.7, cache=VerdictCache(tmp_path / "c.sqlite"))
    c3.judge(RUBRIC, [P], answers[:1])
    assert s.calls == 11


def test_failures_are_not_cached(replay, tmp_path):
    s = replay(script=["malformed", "malformed"])
    cache = VerdictCache(tmp_path / "c.sqlite")
    assert client(s, cache=cache).judge(RUBRIC, [P], [ANSWER])[0].score is None
    assert client(s, cache=cache).judge(RUBRIC, [P], [ANSWER])[0].score is not None


def test_api_key_sent_as_bearer(replay):
    s = replay()
    client(s, api_key="sk-test").judge(RUBRIC, [P], [ANSWER])
    client(s).judge(RUBRIC, [P], ['{"intent": "refund", "order_id": "123456"}'])
    assert s.auth == ["Bearer sk-test", None]


@pytest.mark.parametrize("content, error", [
    ('{"data_id": "d", "score": 4}', None),
    ('```json\n{"data_id": "d", "score": 4, "reasons": "ok"}\n```', None),
    ('{"data_id": "d", "score": "5"}', "number"),
    ('{"data_id": "d", "score": true}', "number"),
    ('{"data_id": "d", "score": 6}', "outside"),
    ('{"data_id": "x", "score": 4}', "data_id"),
    ('{"score": 4}', "data_id"),
    ('Score: 4', "JSON"),
    ('{"data_id": "d", "score": 4} {"data_id": "d", "score": 5}', "JSON"),
    ('[{"data_id": "d", "score": 4}]', "object"),
])
def test_parse_verdict_is_strict(content, error):
    if error is None:
        assert parse_verdict(content, "d", 1, 5)[0] == 4.0
    else:
        with pytest.raises(ValueError, match=error):
            parse_verdict(content, "d", 1, 5)
