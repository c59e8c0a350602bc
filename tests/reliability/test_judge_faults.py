"""Judge faults at stage level: the real score stage (``tasks.score.score``) against a judge that is down, slow past
its timeout, answers garbage or out-of-range scores, or dies mid-run.

The judge is ``flywheel.rewards.replay_server`` over real HTTP (scripted answers, requests counted at the server).
With ``on_failure: fail`` the stage raises a ``JudgeError`` naming the judge (model, endpoint without credentials)
and the reason, and writes no scored file; with ``on_failure: missing`` the judge's component is NaN for those rows —
never a zero — the total follows ``rewards.missing`` and ``judge_counts`` says how many verdicts are missing and why
(``missing_<reason>``). A run that dies after K answers leaves K verdicts (the last flush when SIGKILLed) in the cache:
the rerun asks only for the others and ends with the scores of a fault-free run. No test sleeps for time.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import load_config
from flywheel.rewards.judge import JudgeClient, JudgeError, VerdictCache, load_rubric
from flywheel.rewards.replay_server import ReplayServer, default_score

ROOT = Path(__file__).resolve().parents[2]
N = 6  # rows of the snapshot in most tests
SECRET = "sk-sentinel-judge-0000"


@pytest.fixture
def rubric(tmp_path) -> str:
    """A 1-10 rubric (so 11, 0, -3 and 10.5 are out of range; 1 and 10 are not)."""
    path = tmp_path / "tenpoint.md"
    path.write_text("---\nname: tenpoint\nscore_range: [1, 10]\n---\nGrade how helpful the ANSWER is, 1 to 10.\n")
    return str(path)


def write_snapshot(path: Path, n: int) -> Path:
    """A clean snapshot of ``n`` distinct, non-degenerate rows (the columns the score stage reads)."""
    rows = [{"request_id": f"req-{i:04d}", "dt": "2026-11-20", "task": "support_triage",
             "messages": json.dumps([{"role": "user", "content": f"Where is my order {300000 + i}?"}]),
             "completion": f'{{"intent": "track_order", "order_id": "{300000 + i}"}}',
             "thumbs": None, "resolved": None, "escalated": None, "edited": None, "comment": None}
            for i in range(n)]
    df = pd.DataFrame(rows)
    df["thumbs"] = df["thumbs"].astype("Int8")
    for c in ("resolved", "escalated", "edited"):
        df[c] = df[c].astype("boolean")
    df.to_parquet(path, index=False)
    return path


@pytest.fixture
def snapshot(tmp_path) -> Path:
    return write_snapshot(tmp_path / "clean.parquet", N)


def config(state: Path, url: str, rubric: str, missing: str = "renormalize", **judge):
    judge = {"base_url": url, "model": "judge-model", "backoff_s": 0.01, "max_retries": 1, "timeout_s": 5,
             "concurrency": 4, **judge}
    return load_config(None, overrides={
        "project.state_dir": str(state), "rewards.missing": missing,
        "rewards.components": [{"name": "sane", "kind": "rule", "params": {"check": "not_degenerate"}},
                               {"name": "helpfulness", "kind": "llm_judge", "params": {"rubric": rubric}}],
        "rewards.judge": judge})


def run_stage(cfg, snap: Path):
    from tasks.score import score

    rec = score(cfg, str(snap), snapshot_hash="h")
    return rec, pd.read_parquet(rec.scored_uri)


def dead_url() -> str:
    """An endpoint with nothing listening (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@contextmanager
def endpoint(fault: str | None, **kw):
    """(base URL, server or None) of the judge for a fault: ``down`` = nothing listening, else a replay action."""
    if fault == "down":
        yield dead_url(), None
        return
    with ReplayServer(default=fault or "valid", **kw) as server:
        yield server.base_url, server


def with_secret(url: str) -> str:
    """The URL with credentials in it, as a careless config could hold them: they must never reach a message."""
    return url.replace("http://", f"http://user:{SECRET}@")


# fault id -> (replay action or "down", extra judge config, reason counted, text the failure message holds, transient)
FAULTS = {
    "endpoint_down": ("down", {}, "unreachable", "ConnectError", True),
    "slow_past_timeout": ("slow", {"timeout_s": 0.2}, "timeout", "Timeout", True),
    "http_500_always": ("500", {}, "http_500", "HTTP 500", True),
    "http_429_always": ("429", {}, "http_429", "HTTP 429", True),
    "http_401_unauthorized": ("401", {}, "http_401", "endpoint answered HTTP 401", False),
    "prose_not_json": ("malformed", {}, "not_json", "not one JSON object", False),
    "html_error_page_as_verdict": ("content:<html><body>502 Bad Gateway</body></html>", {}, "not_json",
                                   "not one JSON object", False),
    "empty_verdict": ("content:", {}, "not_json", "not one JSON object", False),
    "truncated_json_verdict": ('content:{"data_id": "', {}, "not_json", "not one JSON object", False),
    "json_array_verdict": ("content:[7, 8]", {}, "not_an_object", "must be a JSON object", False),
    "verdict_without_data_id": ('content:{"score": 7}', {}, "wrong_data_id", "data_id must be", False),
    "body_not_a_completion": ("body:<html>upstream timed out</html>", {}, "bad_response",
                              "without choices[0].message.content", False),
    "score_11_of_10": ("score:11", {}, "score_out_of_range", "outside the rubric's range [1, 10]", False),
    "score_0": ("score:0", {}, "score_out_of_range", "outside the rubric's range", False),
    "score_negative": ("score:-3", {}, "score_out_of_range", "outside the rubric's range", False),
    "score_10_5": ("score:10.5", {}, "score_out_of_range", "outside the rubric's range", False),
    "score_huge": ("score:1e300", {}, "score_out_of_range", "outside the rubric's range", False),
    "score_nan": ("score:NaN", {}, "score_not_a_number", "finite number, got nan", False),
    "score_infinity": ("score:Infinity", {}, "score_not_a_number", "finite number, got inf", False),
    "score_overflow": ("score:1e999", {}, "score_not_a_number", "finite number, got inf", False),
    "score_string": ('score:"7"', {}, "score_not_a_number", "finite number, got '7'", False),
    "score_bool": ("score:true", {}, "score_not_a_number", "finite number, got True", False),
    "score_null": ("score:null", {}, "score_not_a_number", "finite number, got None", False),
    "score_list": ("score:[7]", {}, "score_not_a_number", "finite number, got [7]", False),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_on_failure_missing_marks_the_rows_missing_never_zero(fault, tmp_path, snapshot, rubric):
    action, extra, reason, _, _ = FAULTS[fault]
    with endpoint(action, slow_s=1.0) as (url, server):
        rec, scored = run_stage(config(tmp_path / "state", url, rubric, **extra), snapshot)
    judged = scored["reward_helpfulness"]
    assert judged.isna().all() and not (judged == 0).any()  # NaN on every row, never a silent zero
    assert rec.missing["helpfulness"] == N and rec.missing["sane"] == 0
    # renormalize: the total is the rule alone, rescaled to the whole weight (1 + 1)
    assert (scored["reward_total"] == 2 * scored["reward_sane"]).all() and scored["reward_total"].notna().all()
    counts = rec.judge_counts
    assert counts["failures"] == N and counts[f"missing_{reason}"] == N
    assert sum(v for k, v in counts.items() if k.startswith("missing_")) == rec.missing["helpfulness"]
    if server is not None:
        assert counts["requests"] == server.calls
        if reason.startswith("score_") or reason in {"not_json", "not_an_object", "wrong_data_id"}:
            assert counts["repairs"] == N and server.calls == 2 * N  # one repair per row, then missing
        if action in {"500", "429", "slow"}:
            assert counts["retries"] == N and server.calls == 2 * N  # max_retries: 1
        if action == "401":
            assert counts["retries"] == 0 and server.calls == N  # a refusal is not retried
    else:
        assert counts["requests"] == 2 * N and counts["retries"] == N


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_with_on_failure_fail_stops_the_stage_naming_judge_and_reason(fault, tmp_path, snapshot, rubric):
    from tasks.score import retry_on_io

    action, extra, reason, text, transient = FAULTS[fault]
    state = tmp_path / "state"
    with endpoint(action, slow_s=1.0) as (url, _server):
        cfg = config(state, with_secret(url), rubric, on_failure="fail", **extra)
        with pytest.raises(JudgeError) as err:
            run_stage(cfg, snapshot)
    message = str(err.value)
    assert message.startswith(f"judge 'judge-model' at {url}/chat/completions: ") and text in message, message
    assert SECRET not in message and "user:" not in message
    assert err.value.reason == reason and err.value.transient is transient
    assert not list(state.glob("snapshots/*.scored-*"))  # no scored file: nothing downstream trains on it
    from prefect.states import Failed
    assert retry_on_io(None, None, Failed(data=err.value)) is transient  # Prefect retries only the endpoint's faults


def test_only_the_failed_rows_are_missing_and_the_counts_say_why(tmp_path, rubric):
    snap = write_snapshot(tmp_path / "clean.parquet", 8)
    script = ["score:1", "score:11", "score:11", "score:10", "500", "500", "score:5.5", "content:nope",
              "content:nope", "valid", "valid", "valid"]
    with ReplayServer(script=script) as s:
        rec, scored = run_stage(config(tmp_path / "state", s.base_url, rubric, concurrency=1), snap)
    got = scored["reward_helpfulness"].tolist()
    rest = [default_score(c, 1, 10) for c in scored["completion"][5:]]
    assert got[0] == 1 and np.isnan(got[1]) and got[2] == 10 and np.isnan(got[3]) and got[4] == 5.5
    assert np.isnan(got[5]) and got[6:] == rest[1:]  # row 5: prose twice; rows 6-7 the replay's own opinion
    assert rec.missing["helpfulness"] == 3
    c = rec.judge_counts
    assert (c["missing_score_out_of_range"], c["missing_http_500"], c["missing_not_json"]) == (1, 1, 1)
    assert c["failures"] == 3
    present = scored["reward_helpfulness"].notna()
    assert (scored.loc[present, "reward_total"] == scored.loc[present, "reward_sane"]
            + scored.loc[present, "reward_helpfulness"]).all()
    assert (scored.loc[~present, "reward_total"] == 2 * scored.loc[~present, "reward_sane"]).all()


def test_missing_nan_makes_the_total_missing_too(tmp_path, snapshot, rubric):
    with ReplayServer(default="score:11") as s:
        rec, scored = run_stage(config(tmp_path / "state", s.base_url, rubric, missing="nan"), snapshot)
    assert scored["reward_helpfulness"].isna().all() and scored["reward_total"].isna().all()
    assert scored["reward_sane"].notna().all() and rec.means["total"] is None
    assert rec.judge_counts["missing_score_out_of_range"] == N


def cached_verdicts(state: Path) -> int:
    with sqlite3.connect(state / "judge_cache.sqlite") as db:
        return db.execute("SELECT count(*) FROM verdicts").fetchone()[0]


def fault_free(tmp_path, snap: Path, rubric: str) -> pd.DataFrame:
    with ReplayServer() as s:
        rec, scored = run_stage(config(tmp_path / "clean-state", s.base_url, rubric), snap)
        assert s.calls == len(scored) and rec.missing["helpfulness"] == 0
    return scored


def assert_same_scores(scored: pd.DataFrame, reference: pd.DataFrame) -> None:
    for col in ("reward_sane", "reward_helpfulness", "reward_total"):
        assert scored[col].tolist() == reference[col].tolist(), col


def test_rerun_after_the_judge_starts_failing_asks_only_the_uncached_rows(tmp_path, rubric):
    n, k = 12, 5
    snap = write_snapshot(tmp_path / "clean.parquet", n)
    state = tmp_path / "state"
    with ReplayServer(script=["valid"] * k, default="500") as s:
        with pytest.raises(JudgeError, match="endpoint failed after 1 attempts: HTTP 500") as err:
            run_stage(config(state, s.base_url, rubric, on_failure="fail", concurrency=1, max_retries=0), snap)
        # the failing request, perhaps one more already on its way when the stage stopped
        assert err.value.transient and k + 1 <= s.calls <= k + 2
    assert cached_verdicts(state) == k  # the verdicts paid for before the failure are kept
    with ReplayServer() as s:
        rec, scored = run_stage(config(state, s.base_url, rubric, on_failure="fail"), snap)
        assert s.calls == n - k  # only the rows not yet cached are asked again
    assert rec.judge_counts["cache_hits"] == k and rec.missing["helpfulness"] == 0
    assert_same_scores(scored, fault_free(tmp_path, snap, rubric))


KILLED_RUN = """
import json, sys
from flywheel.config import load_config
from tasks.score import score
score(load_config(None, overrides=json.loads(sys.argv[1])), sys.argv[2], snapshot_hash="h")
"""


def test_rerun_after_sigkill_mid_batch_resumes_from_the_cache(tmp_path, rubric):
    """The score stage SIGKILLed while the judge holds its 41st request: the 32 verdicts flushed stay cached."""
    flush = JudgeClient.cache_flush_every
    n, k = flush + 16, flush + 8
    snap = write_snapshot(tmp_path / "clean.parquet", n)
    state = tmp_path / "state"
    with ReplayServer(script=["valid"] * k, default="hang") as s:
        cfg = config(state, s.base_url, rubric, concurrency=1)
        overrides = {"project.state_dir": str(state), "rewards.missing": cfg.rewards.missing,
                     "rewards.components": [c.model_dump() for c in cfg.rewards.components],
                     "rewards.judge": {"base_url": s.base_url, "model": "judge-model", "concurrency": 1}}
        log = tmp_path / "killed-run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(overrides), str(snap)], cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while s.calls <= k and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)  # poll: the (k+1)-th request reaches the judge and hangs there
            assert s.calls == k + 1 and proc.poll() is None, log.read_text()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert cached_verdicts(state) == (k // flush) * flush  # every full batch of verdicts reached the disk
    with ReplayServer() as s:
        rec, scored = run_stage(config(state, s.base_url, rubric), snap)
        assert s.calls == n - (k // flush) * flush
    assert rec.judge_counts["cache_hits"] == (k // flush) * flush and rec.missing["helpfulness"] == 0
    assert_same_scores(scored, fault_free(tmp_path, snap, rubric))


@pytest.mark.parametrize("poison", [11, -3, float("nan"), "7", None])
def test_a_cached_verdict_out_of_range_is_not_trusted(tmp_path, rubric, poison):
    """A cache written by another version (or by hand) with a bad score: asked again, never used."""
    r = load_rubric(rubric)
    p, answer = [{"role": "user", "content": "Where is order 123456?"}], '{"intent": "track_order"}'
    cache = VerdictCache(tmp_path / "c.sqlite")
    with ReplayServer() as s:
        c = JudgeClient(s.base_url, "judge-model", cache=cache, backoff_s=0.01)
        cache.put(c.cache_key("pointwise", r.sha, [p, answer]), {"score": poison, "reasons": ["poisoned"]})
        v = c.judge(r, [p], [answer])[0]
        assert s.calls == 1 and not v.cached and v.score == default_score(answer, 1, 10)
    cache.close()
