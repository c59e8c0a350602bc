"""Rule and KPI graders: every rule passes and fails where it should, with reasons; doctests run."""
import doctest
import math

import pytest

from flywheel.rewards import calibration, composite, judge, kpi, pairwise, rules
from flywheel.rewards.rules import build_rule

USER = [{"role": "system", "content": "triage"}, {"role": "user", "content": "Please refund order 482913, thanks"}]


@pytest.mark.parametrize("module", [rules, kpi, judge, pairwise, calibration, composite])
def test_rewards_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_json_schema_demo_contract_and_reasons():
    schema = {"type": "object", "required": ["intent", "order_id"], "additionalProperties": False,
              "properties": {"intent": {"enum": ["refund", "track_order"]},
                             "order_id": {"type": "string", "pattern": r"^\d{6}$"}}}
    g = build_rule({"check": "json_schema", "schema": schema})
    answers = ['{"intent": "refund", "order_id": "482913"}', '{"intent": "reimburse", "order_id": "482913"}',
               '{"intent": "refund", "order_id": 482913}', '{"intent": "refund", "order_id": "482913", "x": 1}',
               '{"intent": "refund"', "intent: refund"]
    graded = g.grade([USER] * len(answers), answers)
    assert [s for s, _ in graded] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert "intent" in graded[1][1] and "invalid JSON" in graded[4][1]


def test_extract_compare_order_id_from_user_message():
    g = build_rule({"check": "extract_compare", "pattern": r"(?<!\d)\d{6}(?!\d)"})
    answers = ['{"intent": "refund", "order_id": "482913"}', '{"intent": "refund", "order_id": "482918"}',
               '{"order_id": "482913", "alt": "111111"}', "no id"]
    assert g([USER] * 4, answers) == [1.0, 0.0, 0.0, 0.0]
    # the id is taken from the prompt each time, never fixed
    other = [{"role": "user", "content": "cancel 777001"}]
    assert g([other], ['{"order_id": "777001"}']) == [1.0]


def test_regex_length_vocabulary_python_match():
    assert build_rule({"check": "regex", "pattern": "password", "must_match": False, "flags": "i"})(
        [[]] * 2, ["Your order ships today", "Send me your PASSWORD"]) == [1.0, 0.0]
    assert rules.length(5, 10, unit="words")([[]] * 2, ["one two three four five", "one"]) == [1.0, 0.2]
    v = rules.vocabulary(required=["order", "sorry"], banned=["idiot"])
    assert v([[]] * 3, ["Sorry about your order", "your order", "sorry, idiot order"]) == [1.0, 0.5, 0.0]
    assert rules.vocabulary(banned=["cat"])([[]], ["concatenate"]) == [1.0]  # whole words only
    assert rules.python_syntax()([[]] * 2, ["```python\nx = [1, 2]\n```", "```python\nx = [1, 2\n```"]) == [1.0, 0.0]
    assert rules.exact_match()([[]] * 2, ["Refund", "refund!"], references=["refund", "refund"]) == [1.0, 0.0]
    f = rules.fuzzy_match()([[]] * 2, ["track_order", "complaint"], references=["track_order", "track order"])
    assert f[0] == 1.0 and f[1] < 0.5


def test_rule_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"components\[2\].params.check"):
        build_rule({"check": "nope"}, "rewards.components[2].params")
    with pytest.raises(ValueError, match="bad arguments"):
        build_rule({"check": "regex", "patern": "x"})
    with pytest.raises(ValueError, match="cannot be built"):
        build_rule({"check": "regex", "pattern": "("})
    with pytest.raises(ValueError, match="references"):
        rules.exact_match()([[]], ["x"])


@pytest.mark.parametrize("text", ["", "   ", "...", "?!", "Thought process:", "Solution",
                                  "Let's solve this problem step by step.", "解"])
def test_degenerate_answers_are_caught(text):
    assert rules.degenerate_reason(text) is not None


@pytest.mark.parametrize("text", ['{"intent": "refund", "order_id": "123456"}', "Solution: refund order 123456 today.",
                                  "OK, I have cancelled order 123456 for you."])
def test_real_answers_are_not_degenerate(text):
    assert rules.degenerate_reason(text) is None


def test_kpi_maps_feedback_and_missing_is_nan():
    g = kpi.kpi_grader({"resolved": 1.0, "escalated": -1.0, "thumbs": 0.5})
    got = g([[]] * 4, ["a"] * 4, resolved=[True, False, None, "false"], escalated=[False, True, None, None],
            thumbs=[1, -1, None, None])
    assert got[:2] == [1.5, -1.5] and math.isnan(got[2]) and got[3] == 0.0
    assert kpi.binary_label({"resolved": None, "thumbs": 1}, ["resolved", "thumbs"]) == 1.0
    assert kpi.binary_label({"resolved": None, "thumbs": None}, ["resolved", "thumbs"]) is None


def test_a_human_stepping_in_makes_the_label_bad_and_the_answer_not_good():
    from flywheel.schema import STEPPED_IN_FIELDS
    from flywheel.snapshots import is_good

    fields = ["resolved", "thumbs"]
    assert kpi.binary_label({"thumbs": 1, "edited": True}, fields, STEPPED_IN_FIELDS) == 0.0  # re-routed: bad
    assert kpi.binary_label({"resolved": True, "escalated": True}, fields, STEPPED_IN_FIELDS) == 0.0
    assert kpi.binary_label({"thumbs": 1, "edited": False}, fields, STEPPED_IN_FIELDS) == 1.0
    assert kpi.binary_label({"thumbs": None, "edited": True}, fields, STEPPED_IN_FIELDS) == 0.0  # a label now
    assert kpi.binary_label({"thumbs": None, "edited": None}, fields, STEPPED_IN_FIELDS) is None
    assert kpi.binary_label({"thumbs": 1, "edited": True}, fields) == 1.0  # stepped_in: [] = label fields only
    assert not is_good({"thumbs": 1, "edited": True}) and is_good({"thumbs": 1, "edited": False})
    assert not is_good({"resolved": True, "escalated": True}) and is_good({"resolved": True})
