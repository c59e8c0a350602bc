"""Evaluation statistics, gates and the report, on arrays (no model)."""
import json

import numpy as np
import pandas as pd
import pytest

from flywheel.config.release import EvaluateConfig, GatesConfig
from flywheel.records import Evaluation
from flywheel.snapshots import holdout_split
from flywheel.stats import bootstrap_mean_ci, build_report, decide, paired_diff_ci, win_rate
from tasks.evaluate import EvalSet, evaluate_with, load_eval_set, read_golden_set

CFG = EvaluateConfig(bootstrap_samples=500)


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_mean_ci(rng.normal(1.0, 1.0, 30))
    large = bootstrap_mean_ci(rng.normal(1.0, 1.0, 3000))
    assert small.lo < small.mean < small.hi and large.lo < 1.0 < large.hi
    assert (large.hi - large.lo) < (small.hi - small.lo) / 5
    with_nan = bootstrap_mean_ci([1.0, float("nan"), 3.0])
    assert with_nan.n == 2 and with_nan.mean == 2.0
    assert bootstrap_mean_ci([float("nan")]).mean is None


def test_paired_difference_sees_a_small_consistent_gain_that_unpaired_noise_hides():
    rng = np.random.default_rng(1)
    champion = rng.normal(0, 1, 200)  # large between-prompt variance
    candidate = champion + 0.05 + rng.normal(0, 0.01, 200)  # small, consistent gain on every prompt
    d = paired_diff_ci(candidate, champion)
    assert d.lo > 0.04 and d.hi < 0.06
    worse = paired_diff_ci(champion - 0.05, champion)
    assert worse.hi < 0


def test_holdout_is_the_newest_rows_and_ties_at_the_cut_are_held_out():
    ts = pd.to_datetime(["2026-11-01", "2026-11-03", "2026-11-02", "2026-11-03", "2026-11-01"], utc=True)
    assert holdout_split(ts.to_numpy(), 0.2).tolist() == [False, True, False, True, False]
    assert holdout_split([], 0.5).tolist() == []


def test_win_rate_cancels_position_bias():
    first_always_wins = [1.0] * 10
    w = win_rate(first_always_wins, first_always_wins)  # the judge only looks at the position
    assert w.rate == pytest.approx(0.5) and w.consistency == 0.0
    w = win_rate([1.0] * 10, [0.0] * 10)  # candidate preferred in both orders
    assert w.rate == 1.0 and w.consistency == 1.0
    assert win_rate([float("nan")], [1.0]) is None


def _report(cand, champ, base, *, kl=None, lengths=None, win=None, gates=None):
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(len(cand["total"]))]
    scores = {"candidate": cand, "champion": champ, "base": base}
    responses = {r: ["x" * 10] * len(prompts) for r in scores}
    measures = {r: {"kl": (kl or {}).get(r), "length": (lengths or {}).get(r)} for r in scores}
    report = build_report(responses, scores, {"json": "rule", "rm": "reward_model"}, measures, CFG, prompts, 3, win)
    return report, decide(report, gates or GatesConfig())


def _scores(rng, n, json_rate, rm_mean):
    js = (rng.random(n) < json_rate).astype(float)
    rm = rng.normal(rm_mean, 0.1, n)
    return {"json": js, "rm": rm, "total": js + rm}


def test_gates_pass_for_a_better_candidate_and_name_each_failure():
    rng = np.random.default_rng(2)
    champ, base = _scores(rng, 200, 0.9, 0.5), _scores(rng, 200, 0.2, 0.0)
    better = {k: v.copy() for k, v in champ.items()}
    better["rm"] = better["rm"] + 0.2
    better["total"] = better["json"] + better["rm"]
    report, decision = _report(better, champ, base, kl={"candidate": [1.0] * 200, "champion": [0.8] * 200})
    assert decision.passed, decision.reason
    assert {g.name for g in decision.gates} == {"total_gain", "rule_json", "known_good", "win_rate", "kl"}
    assert report.diff["total"].lo > 0.15

    # higher total reward bought by breaking the rule: the rule gate fails even though the gain gate passes
    hacked = {"json": np.where(np.arange(200) < 40, 0.0, champ["json"]), "rm": champ["rm"] + 1.0}
    hacked["total"] = hacked["json"] + hacked["rm"]
    _, decision = _report(hacked, champ, base)
    by = {g.name: g for g in decision.gates}
    assert by["total_gain"].passed and not by["rule_json"].passed and not decision.passed
    assert "rule 'json' pass rate" in decision.reason

    _, decision = _report(better, champ, base, kl={"candidate": [500.0] * 200})
    assert not {g.name: g for g in decision.gates}["kl"].passed

    _, decision = _report(champ, champ, base)  # no gain: CI lower bound is 0, not > 0
    assert not {g.name: g for g in decision.gates}["total_gain"].passed

    w = win_rate([0.0] * 50 + [1.0] * 10, [1.0] * 60)
    _, decision = _report(better, champ, base, win=w)
    assert not {g.name: g for g in decision.gates}["win_rate"].passed


def test_known_good_gate_rejects_a_candidate_that_rewrites_what_users_liked():
    """The reward model says better, but the candidate no longer gives 30 of the 100 answers feedback marked good:
    it learned to fool the reward model. The gate compares with the champion, so a task whose answers are never
    reproduced word for word (free text) loses nothing to it."""
    n = 200
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    references = [f"answer {i}" if i % 2 == 0 else None for i in range(n)]  # 100 known-good logged answers
    champion = [f"answer {i}" for i in range(n)]
    rewriter = [f"other {i}" if i < 60 else f"answer {i}" for i in range(n)]  # 30 known-good answers rewritten
    rng = np.random.default_rng(3)
    champ = _scores(rng, n, 1.0, 0.5)
    cand = {k: v.copy() for k, v in champ.items()}
    cand["rm"], cand["total"] = cand["rm"] + 0.3, cand["total"] + 0.3

    def decision_for(candidate: list[str], champ_answers: list[str]):
        responses = {"candidate": candidate, "champion": champ_answers, "base": champ_answers}
        scores = {"candidate": cand, "champion": champ, "base": champ}
        report = build_report(responses, scores, {"json": "rule", "rm": "reward_model"}, {}, CFG, prompts, 3,
                              references=references)
        return report, decide(report, GatesConfig())

    report, decision = decision_for(rewriter, champion)
    gate = {g.name: g for g in decision.gates}["known_good"]
    assert report.roles["candidate"].known_good.mean == pytest.approx(0.7)
    assert report.roles["champion"].known_good.mean == 1.0
    assert not gate.passed and not decision.passed and gate.value == pytest.approx(-0.3)
    assert "answers marked good reproduced 0.700 vs champion 1.000" in decision.reason
    # whitespace does not count; a free-text task where neither reproduces the logged text passes
    assert decision_for([f" answer  {i}" for i in range(n)], champion)[1].passed
    free_text = [f"reworded {i}" for i in range(n)]
    assert decision_for(free_text, [f"phrased {i}" for i in range(n)])[1].passed
    # without any known-good reference (no feedback) the gate is skipped, not failed
    report = build_report({"candidate": rewriter, "champion": champion, "base": champion},
                          {"candidate": cand, "champion": champ, "base": champ}, {}, {}, CFG, prompts, 3,
                          references=[None] * n)
    skipped = {g.name: g for g in decide(report, GatesConfig()).gates}["known_good"]
    assert skipped.passed and skipped.value is None


def test_monitors_flag_length_drift_entropy_collapse_and_kl_spike():
    rng = np.random.default_rng(3)
    s = _scores(rng, 50, 0.9, 0.5)
    prompts = [[{"role": "user", "content": "q"}]] * 50
    responses = {"candidate": ["a" * 40] * 50, "champion": ["a" * 10] * 50, "base": ["a" * 10] * 50}
    measures = {"candidate": {"kl": [5.0] * 50, "entropy": [0.01] * 50},
                "champion": {"kl": [0.5] * 50, "entropy": [1.0] * 50},
                "base": {"kl": [0.0] * 50, "entropy": [2.0] * 50}}
    report = build_report(responses, {"candidate": s, "champion": s, "base": s}, {}, measures, CFG, prompts, 1)
    flagged = {m.name for m in report.monitors if not m.passed}
    assert flagged == {"length_drift", "entropy_collapse", "kl_spike"}
    blocking = decide(report, GatesConfig(block_on_monitors=True))
    assert not {g.name: g for g in blocking.gates}["monitors"].passed


def test_eval_set_is_held_out_newest_prompts_plus_golden(tmp_path):
    def msgs(t):
        return json.dumps([{"role": "user", "content": t}])

    df = pd.DataFrame({
        "timestamp": pd.to_datetime(["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"], utc=True),
        "messages": [msgs("a"), msgs("b"), msgs("c"), msgs("a"), msgs("e")],
    })
    df.to_parquet(tmp_path / "s.parquet")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"messages": [{"role": "user", "content": "g"}], "completion": "G"}) + "\n")
    es = load_eval_set(tmp_path / "s.parquet", EvaluateConfig(eval_fraction=0.4, golden_set=gold))
    # newest 40 % = rows 4 and 5; "a" (row 4) was also in the training part, so only "e" stays; then golden
    assert [p[0]["content"] for p in es.prompts] == ["e", "g"]
    assert es.references == [None, "G"] and es.source == ["logs", "golden"]
    # a logged answer is a known-good reference when its feedback marked it good (resolved, not escalated)
    df["completion"] = ["A", "B", "C", "A2", "E"]
    for resolved, escalated, expected in ((True, False, "E"), (False, False, None), (True, True, None)):
        df["resolved"] = pd.array([None, None, None, None, resolved], dtype="boolean")
        df["escalated"] = pd.array([None, None, None, None, escalated], dtype="boolean")
        df.to_parquet(tmp_path / "s.parquet")
        assert load_eval_set(tmp_path / "s.parquet", EvaluateConfig(eval_fraction=0.4)).references == [expected]
    gold.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n{"messages": "nope"}\n')
    with pytest.raises(ValueError, match=r"gold.jsonl:2: 'messages'"):
        read_golden_set(gold)


def test_evaluate_with_writes_report_and_decision(tmp_path):
    prompts = [[{"role": "user", "content": f"order {i:06d}"}] for i in range(40)]
    answers = {"candidate": lambda i: f"{i:06d}", "champion": lambda i: f"{i:06d}" if i % 2 else "?",
               "base": lambda i: "?"}

    def generate(role, ps):
        return [answers[role](int(p[0]["content"].split()[1])) for p in ps]

    def score(ps, cs):
        ok = [float(p[0]["content"].endswith(c)) for p, c in zip(ps, cs)]
        return {"copy": ok, "total": ok}

    res = evaluate_with(EvalSet(prompts=prompts, references=[None] * 40, source=["logs"] * 40), generate, score,
                        CFG, tmp_path, kinds={"copy": "rule"}, champion_version=7, candidate_uri="cand",
                        candidate_run_id="train-run")
    assert isinstance(res, Evaluation) and res.passed and res.champion_version == 7
    assert (res.candidate_uri, res.candidate_run_id) == ("cand", "train-run")
    assert res.summary["gain"] == pytest.approx(0.5)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["decision"]["passed"] and data["report"]["roles"]["champion"]["pass_rates"]["copy"]["mean"] == 0.5
    html = (tmp_path / "report.html").read_text()
    assert "PROMOTABLE" in html and html.count("data:image/png;base64") >= 2
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == 40


def test_win_rate_gate_with_a_pairwise_judge_over_http(state_dir, tmp_path):
    """The configured judge (a local OpenAI-compatible server replaying a 'prefers the longer answer' opinion)."""
    from flywheel.config import load_config
    from flywheel.rewards.replay_server import ReplayServer
    from tasks.evaluate import pairwise_judge

    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    es = EvalSet(prompts=prompts, references=[None] * 12, source=["logs"] * 12)

    def score(ps, cs):
        return {"total": [1.0] * len(cs)}

    with ReplayServer() as srv:
        cfg = load_config(None, overrides={
            "project.state_dir": str(state_dir), "rewards.judge.base_url": srv.base_url,
            "rewards.components": [{"name": "helpful", "kind": "llm_judge", "params": {"rubric": "helpfulness"}}]})
        pairwise = pairwise_judge(cfg)
        for cand, champ, wins in (("a detailed answer", "short", True), ("short", "a detailed answer", False)):
            answers = {"candidate": cand, "champion": champ, "base": "x"}
            res = evaluate_with(es, lambda role, ps, a=answers: [a[role]] * len(ps), score, CFG,
                                tmp_path / cand[:5], pairwise=pairwise, champion_version=1)
            gate = {g.name: g for g in res.decision.gates}["win_rate"]
            assert gate.passed is wins and res.summary["win_rate"] == (1.0 if wins else 0.0)
        # both orders of each prompt judged once over HTTP; mirrored calls and the swapped scenario come from the cache
        assert srv.calls == 2 * 12
