"""Lineage on every registry version: the day-0 champion (``register_champion``) and nightly candidates
(``promote_candidate``, promoted or rejected) carry non-empty snapshot, validation report, reward spec, base model,
parent champion and code revision tags, taken from the stage records, never guessed."""
import json
from pathlib import Path

import pytest

from flywheel.records import NONE, Decision, Evaluation, WarmStart

LINEAGE_TAGS = ("snapshot_hash", "validation_report", "reward_spec_hash", "base_model", "parent_champion_version",
                "code_revision")


def _evaluation(candidate, champion_version: int | None, passed: bool) -> Evaluation:
    reason = "every gate passed" if passed else "total_gain: CI includes 0"
    return Evaluation(candidate_uri=candidate.adapter_uri, champion_version=champion_version, report_json="report.json",
                      report_html="report.html", run_id=None, passed=passed,
                      decision=Decision(passed=passed, gates=[], reason=reason), summary={"gain": 0.2})


def test_day0_champion_and_nightly_candidates_carry_every_lineage_tag(state_dir, adapters, make_scores,
                                                                      make_candidate):
    from flywheel.config import load_config
    from flywheel.registry import Registry
    from tasks.bootstrap import existing_champion, register_champion
    from tasks.promote import promote_candidate

    cfg = load_config(None, overrides={"project.state_dir": str(state_dir)})
    registry = Registry.from_config(cfg)
    assert existing_champion(cfg) is None

    # day 0: the warm start is version 1, with no parent and no reward spec
    warm = WarmStart(snapshot_hash="day0-sha", validation_report_uri=str(state_dir / "validation" / "day0.json"),
                     base_model="tiny-base", adapter_uri=str(adapters[0]), examples=12, rows=40, losses=[2.0, 1.5])
    v1 = register_champion.fn(cfg, warm)
    assert (v1.decision, v1.version, v1.champion_version, v1.previous_version) == ("promoted", 1, 1, None)
    tags1 = registry.tags(1)
    assert all(tags1[t] for t in LINEAGE_TAGS), tags1
    assert tags1["parent_champion_version"] == NONE and tags1["reward_spec_hash"] == NONE
    assert tags1["snapshot_hash"] == "day0-sha" and tags1["validation_report"] == warm.validation_report_uri
    assert tags1["base_model"] == "tiny-base" and tags1["code_revision"] != NONE
    version, folder = existing_champion(cfg)
    assert version == 1 and (Path(folder) / "adapter_config.json").is_file()

    # night 1: a candidate that passed its gates is promoted; its tags come from the Scores it trained on
    scores = make_scores(snapshot_hash="night1-sha", spec_hash="spec-night1",
                         validation_report_uri=str(state_dir / "validation" / "night1.json"))
    cand = make_candidate(adapters[1], "tiny-base", scores, champion_version=1)
    v2 = promote_candidate.fn(cfg, cand, _evaluation(cand, 1, passed=True))
    assert (v2.decision, v2.version, v2.champion_version, v2.previous_version) == ("promoted", 2, 2, 1)
    tags2 = registry.tags(2)
    assert all(tags2[t] for t in LINEAGE_TAGS), tags2
    assert (tags2["snapshot_hash"], tags2["validation_report"], tags2["reward_spec_hash"]) == (
        "night1-sha", scores.validation_report_uri, "spec-night1")
    assert tags2["base_model"] == "tiny-base" and tags2["parent_champion_version"] == "1"
    assert tags2["code_revision"] == tags1["code_revision"] and json.loads(tags2["eval_summary"]) == {"gain": 0.2}
    assert v2.lineage is not None and v2.lineage.tags().items() <= tags2.items()

    # night 2: a rejected candidate is registered (challenger) with the same complete lineage
    cand3 = make_candidate(adapters[2], "tiny-base", make_scores(snapshot_hash="night2-sha"), champion_version=2)
    v3 = promote_candidate.fn(cfg, cand3, _evaluation(cand3, 2, passed=False))
    assert (v3.decision, v3.champion_version) == ("rejected", 2)
    tags3 = registry.tags(3)
    assert all(tags3[t] and tags3[t] != NONE for t in LINEAGE_TAGS), tags3
    assert tags3["snapshot_hash"] == "night2-sha" and tags3["parent_champion_version"] == "2"


def test_promote_refuses_an_evaluation_of_another_adapter(state_dir, adapters, make_scores, make_candidate):
    from flywheel.config import load_config
    from tasks.promote import promote_candidate

    cfg = load_config(None, overrides={"project.state_dir": str(state_dir)})
    cand = make_candidate(adapters[0], "tiny-base", make_scores())
    other = make_candidate(adapters[1], "tiny-base", make_scores())
    with pytest.raises(ValueError, match="not of the candidate"):
        promote_candidate.fn(cfg, cand, _evaluation(other, None, passed=True))
