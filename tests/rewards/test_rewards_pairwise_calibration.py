"""Pairwise judge (both orders, consistent wins only), calibration metrics, composite reward and its spec hash."""
import math

import numpy as np
import pytest

from flywheel.rewards.calibration import agreement, auc, calibrate, choose_policy, cohen_kappa, spearman
from flywheel.rewards.composite import ComponentSpec, Composite, spec_hash, weighted_total
from flywheel.rewards.judge import JudgeClient, Rubric, VerdictCache
from flywheel.rewards.pairwise import judge_pairs

RUBRIC = Rubric("helpfulness", "Prefer the more complete answer.", 1.0, 5.0)
P = [{"role": "user", "content": "refund 123456"}]


def test_pairwise_counts_consistent_wins_and_ties(replay, tmp_path):
    s = replay()  # prefers the longer answer, whatever its position
    c = JudgeClient(s.base_url, "j", backoff_s=0.01, cache=VerdictCache(tmp_path / "c.sqlite"))
    res = judge_pairs(c, RUBRIC, [P] * 3, ["a longer answer", "short", "same"], ["short", "a longer answer", "four"])
    assert res.outcomes == ["a", "b", "tie"] and (res.wins_a, res.wins_b, res.ties) == (1, 1, 1)
    assert res.inconsistent == 0 and s.calls == 6 and res.win_rate_a == 0.5
    judge_pairs(c, RUBRIC, [P] * 3, ["a longer answer", "short", "same"], ["short", "a longer answer", "four"])
    assert s.calls == 6  # cached


def test_position_biased_judge_gives_no_wins(replay):
    s = replay(pair_fn=lambda a, b: "A")  # always prefers the first position
    res = judge_pairs(JudgeClient(s.base_url, "j"), RUBRIC, [P] * 4, ["x1", "x2", "x3", "x4"], ["y1", "y2", "y3", "y4"])
    assert res.wins_a == res.wins_b == 0 and res.ties == 4 and res.inconsistent == 4


def test_pairwise_failure_is_missing(replay):
    s = replay(default="malformed")
    res = judge_pairs(JudgeClient(s.base_url, "j", backoff_s=0.01), RUBRIC, [P], ["long answer"], ["b"])
    assert res.outcomes == [None] and res.missing == 1 and s.calls == 4  # 2 orders × (ask + repair)


def test_metrics_match_references():
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 6, 60), rng.integers(0, 2, 60)
    a, b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    s = rng.normal(size=60)
    assert spearman(x, s) == pytest.approx(spearmanr(x, s).statistic, abs=1e-6)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-6)
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)


def test_calibration_picks_the_variant_that_agrees_with_people():
    human = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0] * 3
    good = [5 if h else 2 for h in human]
    good[0] = 2  # one disagreement
    noise = [3, 4, 2, 5, 1, 3, 4, 5, 2, 1] * 3
    inverted = [1 if h else 5 for h in human]
    rep = calibrate({"strict": good, "lenient": noise, "inverted": inverted, "broken": [math.nan] * 30}, human)
    assert rep.best == "strict"
    by = {a.name: a for a in rep.variants}
    assert by["strict"].accuracy == pytest.approx(29 / 30) and by["strict"].kappa > 0.9 and by["strict"].threshold == 5
    assert by["broken"].n == 0 and by["inverted"].kappa <= 0
    assert agreement("x", [1, 2, 3], [0, 1, 1]).spearman > 0


def test_auto_policy():
    assert choose_policy("auto", 30, 200) == "judge"
    assert choose_policy("auto", 200, 200) == "reward_model"
    assert choose_policy("judge", 5000, 200) == "judge"


def test_composite_weights_normalisation_and_missing():
    specs = [ComponentSpec("a", "rule", 1.0), ComponentSpec("b", "reward_model", 2.0, normalize="zscore"),
             ComponentSpec("k", "kpi", 1.0)]
    cols = {"a": np.array([1.0, 0.0, 1.0]), "b": np.array([3.0, 1.0, np.nan]), "k": np.array([1.0, np.nan, np.nan])}
    specs[1].fit(cols["b"])
    assert (specs[1].mean, specs[1].std) == (2.0, 1.0)
    t = weighted_total(cols, specs)
    # row 0: 1 + 2·1 + 1 = 4; row 1: (0 - 2) · 4/3; row 2: only a present → 1 · 4/1
    assert t.tolist() == pytest.approx([4.0, -8 / 3, 4.0])
    t_nan = weighted_total(cols, specs, missing="nan")
    assert t_nan[0] == 4.0 and np.isnan(t_nan[1:]).all()
    assert np.isnan(weighted_total({"a": np.array([np.nan])}, [ComponentSpec("a", "rule")]))[0]


def test_composite_returns_every_component_and_online_drops_kpi():
    graders = {"a": lambda p, c, **k: [1.0] * len(c), "k": lambda p, c, **k: [float(x) for x in k["resolved"]]}
    comp = Composite([ComponentSpec("a", "rule", 1.0), ComponentSpec("k", "kpi", 1.0)], graders)
    cols = comp.score([[]] * 2, ["x", "y"], resolved=[1, 0])
    assert set(cols) == {"a", "k", "total"} and cols["total"].tolist() == [2.0, 1.0]
    assert comp.online()([[]] * 2, ["x", "y"]) == [1.0, 1.0]  # no feedback needed online
    with pytest.raises(ValueError, match="no grader"):
        Composite([ComponentSpec("z", "rule")], graders)


def test_spec_hash_changes_with_any_part():
    base = {"components": [{"name": "a", "weight": 1.0}], "reward_model": {"sha": "1"}}
    assert spec_hash(base) == spec_hash({"reward_model": {"sha": "1"}, "components": [{"weight": 1.0, "name": "a"}]})
    assert spec_hash(base) != spec_hash({**base, "components": [{"name": "a", "weight": 2.0}]})
    assert spec_hash(base) != spec_hash({**base, "reward_model": {"sha": "2"}})
