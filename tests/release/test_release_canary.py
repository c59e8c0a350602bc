"""Canary releases (``registry.release_mode: canary``) on a real MLflow registry (SQLite under the test's state dir):
a candidate that passes its gates becomes ``challenger`` only and the champion stays; a failing one gets no alias;
a newer passing one supersedes a canary still running; ``all`` mode is unchanged; deploy without a server says so."""
from __future__ import annotations

import pytest
from test_release_lineage import _evaluation

from flywheel.registry import PromotionError, Registry


def _cfg(state_dir, mode: str):
    from flywheel.config import load_config

    return load_config(None, overrides={"project.state_dir": str(state_dir), "registry.release_mode": mode})


def _night(cfg, adapter, champion: int | None, passed: bool, make_scores, make_candidate):
    from tasks.promote import promote_candidate

    cand = make_candidate(adapter, "tiny-base", make_scores(), champion_version=champion)
    return promote_candidate.fn(cfg, cand, _evaluation(cand, champion, passed=passed))


def test_canary_mode_makes_a_passing_candidate_challenger_and_keeps_the_champion(state_dir, adapters, make_scores,
                                                                                  make_candidate):
    cfg = _cfg(state_dir, "canary")
    registry = Registry.from_config(cfg)
    first = _night(cfg, adapters[0], None, True, make_scores, make_candidate)
    assert (first.decision, first.champion_version) == ("promoted", 1)  # no champion yet: nothing to canary against
    registry.client.delete_registered_model_alias(registry.model_name, "challenger")

    failing = _night(cfg, adapters[1], 1, False, make_scores, make_candidate)
    assert failing.decision == "rejected" and failing.champion_version == 1
    assert registry.state()["aliases"] == {"champion": 1, "challenger": None, "previous": None}  # it gets nothing

    passing = _night(cfg, adapters[2], 1, True, make_scores, make_candidate)
    assert (passing.decision, passing.version, passing.champion_version, passing.previous_version) == (
        "canary", 3, 1, None)
    assert "released to canary" in passing.reason and "every gate passed" in passing.reason
    assert registry.state()["aliases"] == {"champion": 1, "challenger": 3, "previous": None}
    tags = registry.tags(3)
    assert tags["decision"] == "canary" and tags["parent_champion_version"] == "1"
    assert "champion v1 stays" in tags["decision_reason"]

    newer = _night(cfg, adapters[3], 1, True, make_scores, make_candidate)  # the next night, canary still running
    assert newer.decision == "canary" and registry.version_of("challenger") == 4
    assert registry.tags(3)["canary_decision"] == "superseded" and "v4" in registry.tags(3)["canary_reason"]
    assert registry.version_of("champion") == 1

    assert registry.withdraw_challenger(4, "smoke test failed") is True
    assert registry.withdraw_challenger(4, "again") is False  # no longer the challenger
    assert registry.version_of("challenger") is None and registry.tags(4)["canary_decision"] == "rolled_back"


def test_canary_release_is_decided_by_the_gateway_monitor_through_the_registry(state_dir, adapters, make_scores,
                                                                               make_candidate):
    from flywheel.gateway.monitor import ArmStats, apply_decision, decide

    cfg = _cfg(state_dir, "canary")
    registry = Registry.from_config(cfg)
    _night(cfg, adapters[0], None, True, make_scores, make_candidate)
    canary = _night(cfg, adapters[1], 1, True, make_scores, make_candidate)
    assert canary.decision == "canary"
    better = decide(ArmStats(labelled=400, successes=200), ArmStats(labelled=400, successes=300),
                    cfg.gateway.monitor, {"champion": 1, "challenger": 2})
    assert apply_decision(registry, better).applied == "promoted"
    assert registry.state()["aliases"] == {"champion": 2, "challenger": None, "previous": 1}
    assert registry.tags(2)["parent_champion_version"] == "1"  # previous == the champion's parent


def test_all_mode_is_unchanged(state_dir, adapters, make_scores, make_candidate):
    cfg = _cfg(state_dir, "all")
    registry = Registry.from_config(cfg)
    assert _night(cfg, adapters[0], None, True, make_scores, make_candidate).decision == "promoted"
    rejected = _night(cfg, adapters[1], 1, False, make_scores, make_candidate)
    assert rejected.decision == "rejected"
    assert registry.state()["aliases"] == {"champion": 1, "challenger": 2, "previous": None}
    promoted = _night(cfg, adapters[2], 1, True, make_scores, make_candidate)
    assert (promoted.decision, promoted.champion_version, promoted.previous_version) == ("promoted", 3, 1)


def test_release_mode_is_checked(state_dir, adapters):
    from flywheel.config import load_config

    with pytest.raises(Exception, match="release_mode"):
        load_config(None, overrides={"project.state_dir": str(state_dir), "registry.release_mode": "half"})
    registry = Registry.from_config(load_config(None, overrides={"project.state_dir": str(state_dir)}))
    with pytest.raises(PromotionError, match="registry.release_mode: must be 'all' or 'canary', got 'some'"):
        registry.release(adapters[0], passed=True, reason="x", evaluated_champion=None, lineage=None,
                         release_mode="some")


def test_deploy_of_a_canary_without_a_server_is_skipped_and_says_so(state_dir, adapters, make_scores,
                                                                    make_candidate):
    from tasks.deploy import deploy_champion

    cfg = _cfg(state_dir, "canary")
    _night(cfg, adapters[0], None, True, make_scores, make_candidate)
    canary = _night(cfg, adapters[1], 1, True, make_scores, make_candidate)
    cfg.serve.url = "http://127.0.0.1:9"  # nothing listens there
    result = deploy_champion.fn(cfg, canary)
    assert result.status == "skipped" and result.serving == "challenger" and result.version == 2
    assert "challenger v2 is in the registry but not served as 'challenger'" in result.reason
