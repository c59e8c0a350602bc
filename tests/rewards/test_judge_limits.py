"""The judge in production: real concurrency, requests/tokens-per-minute limits, the night's token budget, the counts.

All against the replay server over real HTTP; spacing is read from the server's own arrival times. No test sleeps.
"""
import math
import time

import pandas as pd
import pytest

from flywheel.config import load_config
from flywheel.rewards.judge import JudgeBudgetError, JudgeClient, Rubric, VerdictCache, build_messages
from flywheel.rewards.limits import prompt_tokens

RUBRIC = Rubric("helpfulness", "Grade how helpful the answer is.", 1.0, 5.0)
P = [{"role": "user", "content": "Where is order 123456?"}]


def answers(n: int, base: int = 300000) -> list[str]:
    """``n`` distinct answers of the same length (so every request costs the same tokens)."""
    return [f'{{"intent": "track_order", "order_id": "{base + i}"}}' for i in range(n)]


def client(server, **kw):
    kw.setdefault("backoff_s", 0.01)
    return JudgeClient(server.base_url, "judge-model", **kw)


def charge(c: JudgeClient, answer: str) -> int:
    """What the client charges a request up front: its prompt (characters / 4) + max_tokens."""
    return prompt_tokens(build_messages(RUBRIC, P, answer)[0]) + c.params["max_tokens"]


def gaps(server) -> list[float]:
    t = sorted(server.received)
    return [b - a for a, b in zip(t, t[1:])]


def test_sixteen_requests_run_at_once_not_one_after_another(replay):
    s = replay(latency_s=0.2)
    t0 = time.perf_counter()
    vs = client(s, concurrency=16).judge(RUBRIC, [P] * 16, answers(16))
    elapsed = time.perf_counter() - t0
    assert all(v.score is not None for v in vs) and s.calls == 16
    # serialised, 16 × 200 ms = 3.2 s; concurrent, one latency plus overhead
    assert elapsed < 1.2, f"16 requests to a 200 ms endpoint took {elapsed:.2f} s"
    # every request reached the server before the first answer came back
    assert max(s.received) - min(s.received) < 0.2


def test_requests_per_minute_limit_spaces_requests(replay):
    s = replay()
    c = client(s, concurrency=8, max_requests_per_minute=600)  # one request every 100 ms
    vs = c.judge(RUBRIC, [P] * 8, answers(8))
    assert all(v.score is not None for v in vs)
    g = gaps(s)
    assert len(g) == 7 and min(g) > 0.06, g  # unlimited, 8 concurrent requests arrive within a few ms
    assert sum(g) > 0.63  # 7 × 100 ms, less arrival jitter
    assert c.stats.rate_limited_s > 0.6


def test_tokens_per_minute_limit_spaces_requests_by_their_charge(replay):
    s = replay()
    probe = client(s)
    cost = charge(probe, answers(1)[0])
    c = client(s, concurrency=4, max_tokens_per_minute=cost * 600)  # one request's charge every 100 ms
    vs = c.judge(RUBRIC, [P] * 4, answers(4, base=310000))
    assert all(v.score is not None for v in vs)
    g = gaps(s)
    assert len(g) == 3 and min(g) > 0.06 and sum(g) > 0.27, g


def test_counts_requests_retries_repairs_cache_and_tokens(replay, tmp_path):
    s = replay()
    cache = VerdictCache(tmp_path / "c.sqlite")
    rows = answers(4, base=320000)
    client(s, cache=cache).judge(RUBRIC, [P], rows[3:])  # one verdict cached beforehand
    s.requests.clear()
    s.script = ["500", "malformed"]  # the first row: a retry, then a repair
    c = client(s, concurrency=1, cache=cache)
    vs = c.judge(RUBRIC, [P] * 5, rows + [""])  # 3 sent, 1 cached, 1 degenerate
    assert all(v.score is not None for v in vs)
    st = c.stats
    assert (st.requests, st.retries, st.repairs, st.failures) == (5, 1, 1, 0) == (s.calls, 1, 1, 0)
    assert (st.cache_hits, st.prechecked, st.budget_missing, st.usage_estimated) == (1, 1, 0, 0)
    # tokens from the endpoint's usage, for the 4 answered requests (the HTTP 500 carries none)
    assert st.tokens_in == sum(prompt_tokens(b["messages"]) for b in s.requests[1:])
    assert st.tokens_out > 0 and st.as_dict()["requests"] == 5


def test_tokens_are_estimated_when_the_endpoint_sends_no_usage(replay):
    s = replay(usage=False)
    c = client(s)
    rows = answers(3, base=330000)
    c.judge(RUBRIC, [P] * 3, rows)
    assert c.stats.usage_estimated == 3
    assert c.stats.tokens_in == sum(prompt_tokens(build_messages(RUBRIC, P, a)[0]) for a in rows)
    assert c.stats.tokens_out > 0


def budget_for_three(replay) -> int:
    """A budget that pays for exactly 3 requests: 2 answered ones + the up-front charge of a third."""
    s = replay()
    probe = client(s)
    probe.judge(RUBRIC, [P], answers(1, base=399000))
    used = probe.stats.tokens_in + probe.stats.tokens_out
    return 2 * used + charge(probe, answers(1)[0])


@pytest.mark.parametrize("concurrency", [1, 4])
def test_budget_spent_marks_the_remaining_rows_missing(replay, concurrency):
    budget = budget_for_three(replay)
    s = replay()
    c = client(s, concurrency=concurrency, budget_tokens=budget, on_failure="missing")
    vs = c.judge(RUBRIC, [P] * 8, answers(8, base=340000))
    assert s.calls == 3 and sum(v.score is not None for v in vs) == 3
    missing = [v for v in vs if v.score is None]
    assert len(missing) == 5 == c.stats.budget_missing and c.stats.failures == 0
    assert all("budget_tokens" in v.error and "marked missing" in v.error for v in missing)
    assert c.stats.tokens_in + c.stats.tokens_out <= budget
    # the budget is per client (per night): a later batch of the same client sends nothing
    assert all(v.score is None for v in c.judge(RUBRIC, [P] * 2, answers(2, base=350000))) and s.calls == 3


def test_budget_spent_stops_with_a_message_naming_it(replay, tmp_path):
    budget = budget_for_three(replay)
    s = replay()
    cache = VerdictCache(tmp_path / "c.sqlite")
    c = client(s, concurrency=1, budget_tokens=budget, on_failure="fail", cache=cache)
    rows = answers(6, base=360000)
    with pytest.raises(JudgeBudgetError, match=r"rewards\.judge\.budget_tokens.*budget of \d+ tokens is spent") as e:
        c.judge(RUBRIC, [P] * 6, rows)
    assert "on_failure" in str(e.value) and "attempts" not in str(e.value)  # not retried as transient I/O
    assert s.calls == 3
    again = client(s, cache=cache)  # the verdicts paid for are kept
    again.judge(RUBRIC, [P] * 3, rows[:3])
    assert again.stats.cache_hits == 3 and s.calls == 3


def stage_config(state_dir, url: str, **judge):
    return load_config(None, overrides={
        "project.state_dir": str(state_dir),
        "rewards.components": [{"name": "sane", "kind": "rule", "params": {"check": "not_degenerate"}},
                               {"name": "helpfulness", "kind": "llm_judge", "params": {"rubric": "helpfulness"}}],
        "rewards.judge": {"base_url": url, "backoff_s": 0.01, "concurrency": 4, **judge},
    })


def test_stage_summary_carries_the_counts_and_budget_missing_rows(state_dir, tmp_path, demo_snapshot, replay):
    from tasks.score import score

    s = replay()
    snap = tmp_path / "clean.parquet"
    pd.read_parquet(demo_snapshot).iloc[:12].to_parquet(snap, index=False)
    rec = score(stage_config(state_dir, s.base_url, budget_tokens=2500), str(snap), snapshot_hash="h")
    counts = rec.judge_counts
    assert counts["requests"] == s.calls == rec.judge_requests > 0
    assert 0 < counts["budget_missing"] == rec.missing["helpfulness"] < 12
    assert counts["tokens_in"] > 0 and counts["tokens_out"] > 0 and counts["tokens_in"] + counts["tokens_out"] <= 2500
    scored = pd.read_parquet(rec.scored_uri)
    assert scored["reward_helpfulness"].isna().sum() == counts["budget_missing"]  # NaN, never a silent zero
    assert not (scored["reward_helpfulness"] == 0).any()

    with pytest.raises(JudgeBudgetError, match="budget_tokens"):
        score(stage_config(tmp_path / "state2", s.base_url, budget_tokens=2500, on_failure="fail"), str(snap),
              snapshot_hash="h")
    assert math.isfinite(rec.means["total"])
