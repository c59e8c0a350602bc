"""The demo's built-in tasks: prompts and gold answers, the production model's systematic errors, the feedback each
task's users give, and the reward components each task brings."""
import json
import random

import pytest

from demo import TASKS, get_task
from demo import it_helpdesk as h
from demo.gold import fresh_gold, heldout_gold, score_answers
from demo.logs import generate_logs, load_gold
from flywheel.config import load_config
from flywheel.rewards.spec import build_graders, specs_of

TASK_NAMES = sorted(TASKS)
WRONG_ID = {"support_triage": ("order_id", "111111"), "it_helpdesk": ("asset", "LAP-11111")}  # answer field, value
KIND_FIELD = {"support_triage": "intent", "it_helpdesk": "team"}  # the answer field that names the kind


def test_get_task_names_the_known_tasks():
    assert set(TASK_NAMES) == {"support_triage", "it_helpdesk"}
    assert get_task("it_helpdesk").PROJECT == "helpdesk-bot" and get_task("support_triage").PROJECT == "support-bot"
    assert all(name == task.NAME and task.DESCRIPTION for name, task in TASKS.items())
    with pytest.raises(ValueError, match="it_helpdesk, support_triage"):
        get_task("billing")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_gold_answers_are_correct_and_every_kind_is_asked(name):
    task, rng = get_task(name), random.Random(0)
    for kind in task.KINDS:
        messages, gold = task.make_prompt(rng, kind)
        assert gold["kind"] == kind and messages[-1]["role"] == "user"
    seen = set()
    for _ in range(400):
        messages, gold = task.make_prompt(rng)
        seen.add(gold["kind"])
        right = task.gold_completion(gold)
        assert task.is_correct(right, gold)
        assert not task.is_correct(right[:-1], gold)
        other = next(k for k in task.KINDS if k != gold["kind"])
        assert not task.is_correct(task.gold_completion({**gold, "kind": other, KIND_FIELD[name]: other}), gold)
        id_field, wrong_id = WRONG_ID[name]
        assert not task.is_correct(task.gold_completion({**gold, id_field: wrong_id}), gold)
    assert seen == set(task.KINDS)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_production_accuracy_per_kind_matches_its_default(name, tmp_path):
    task = get_task(name)
    s = generate_logs(task, tmp_path, days=1, rows_per_day=3000, seed=1, defect_rate=0.0, start_date="2026-11-01",
                      fmt="jsonl")
    assert s.task == name and set(s.accuracy_by_kind) == set(task.KINDS)
    for kind, expected in task.DEFAULT_ACCURACY.items():
        assert abs(s.accuracy_by_kind[kind] - expected) < 0.07, (kind, s.accuracy_by_kind[kind], expected)
    gold = load_gold(tmp_path)
    assert all(task.is_correct(g["completion"], g) for g in gold)
    assert all(task.is_correct(g["logged_completion"], g) == g["logged_correct"] for g in gold)


def test_accuracy_override_names_unknown_kinds(tmp_path):
    with pytest.raises(ValueError, match="accuracy: unknown kinds .*refund"):
        generate_logs(get_task("it_helpdesk"), tmp_path, accuracy={"refund": 0.5})


def test_helpdesk_is_a_different_task_from_support_triage():
    support, helpdesk = get_task("support_triage"), get_task("it_helpdesk")
    assert not set(support.KINDS) & set(helpdesk.KINDS)
    low = {t: {k for k, a in task.DEFAULT_ACCURACY.items() if a < 0.5} for t, task in TASKS.items()}
    assert low == {"support_triage": {"cancel_order", "change_address"}, "it_helpdesk": {"access", "security"}}
    _, gold = helpdesk.make_prompt(random.Random(3))
    assert set(gold) == {"kind", "team", "asset"}


def test_helpdesk_phrasings_are_decidable_and_assets_copyable():
    rng = random.Random(0)
    for team, phrasings in h.PHRASINGS.items():
        assert len(set(phrasings)) >= 20
        for p in phrasings:
            for device in h.DEVICES.values():
                assert h.team_of(p.format(dev=device, tag="LAP-48213")) == team, p
    task = h.ItHelpdesk()
    for _ in range(500):
        messages, gold = task.make_prompt(rng)
        text = messages[-1]["content"]
        assert messages[0] == {"role": "system", "content": h.SYSTEM_PROMPT}
        assert h.team_of(text) == gold["team"] == gold["kind"] and h.asset_in(text) == gold["asset"]
        prefix, digits = gold["asset"].split("-")
        assert prefix in h.DEVICES and len(digits) == 5 and digits.isdigit()
        assert h.mangle_asset(rng, gold["asset"]) != gold["asset"]


def test_helpdesk_errors_are_systematic_and_feedback_is_thumbs_and_edited(tmp_path):
    task = get_task("it_helpdesk")
    generate_logs(task, tmp_path, days=1, rows_per_day=3000, seed=2, defect_rate=0.0, start_date="2026-11-01",
                  fmt="jsonl")
    gold = load_gold(tmp_path)
    wrong = {t: [(g, h.parse_answer(g["logged_completion"])) for g in gold if g["kind"] == t
                 and not g["logged_correct"]] for t in ("access", "security")}
    assert sum((p or {}).get("team") == "software" for _, p in wrong["access"]) / len(wrong["access"]) > 0.8
    mangled = sum(p is not None and p["team"] == "security" and p["asset"] != g["asset"] for g, p in wrong["security"])
    assert mangled / len(wrong["security"]) > 0.8
    rows = [json.loads(line) for f in sorted(tmp_path.glob("dt=*/*.jsonl"))
            for line in f.read_text().splitlines()]
    assert all(set(r["feedback"]) == {"thumbs", "edited"} for r in rows)
    correct = {g["request_id"]: g["logged_correct"] for g in gold}
    rated = [r for r in rows if r["feedback"]["thumbs"] is not None]
    assert 0.55 < len(rated) / len(rows) < 0.65
    agree = sum((r["feedback"]["thumbs"] > 0) == correct[r["request_id"]] for r in rated) / len(rated)
    assert 0.85 < agree < 0.95                                  # 10 % label noise by default
    edited_wrong = sum(r["feedback"]["edited"] for r in rows if not correct[r["request_id"]])
    assert edited_wrong / sum(not c for c in correct.values()) > 0.4


@pytest.mark.parametrize("name", TASK_NAMES)
def test_reward_components_validate_and_grade_the_id(name):
    task = get_task(name)
    cfg = load_config(None, {"rewards.components": task.reward_components()})
    specs = specs_of(cfg)
    assert [s.kind for s in specs].count("rule") == 2 and {"reward_model", "kpi"} <= {s.kind for s in specs}
    graders = build_graders(specs, cfg, reward_model_folder=None)
    rules = {s.name: graders[s.name] for s in specs if s.kind == "rule"}
    messages, gold = task.make_prompt(random.Random(5))
    id_field, wrong_id = WRONG_ID[name]
    right, wrong = task.gold_completion(gold), task.gold_completion({**gold, id_field: wrong_id})
    for rule_name, grader in rules.items():
        scores = grader([messages, messages], [right, wrong])
        assert scores[0] == 1.0, rule_name
        if rule_name == id_field:
            assert scores[1] == 0.0
    assert rules["format"]([messages], ["Sure, I can help!"]) == [0.0]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_gold_sets_and_scoring(name, tmp_path):
    task = get_task(name)
    fresh = fresh_gold(task, 60, seed=4)
    perfect = score_answers(task, [g["completion"] for g in fresh], fresh)
    assert perfect["accuracy"] == 100.0 and perfect["n"] == 60 and set(perfect["per_kind"]) <= set(task.KINDS)
    half = score_answers(task, [g["completion"] if i % 2 else "no" for i, g in enumerate(fresh)], fresh)
    assert half["accuracy"] == 50.0 and half["ci"][0] < 50 < half["ci"][1] and sum(half["hits"]) == 30
    s = generate_logs(task, tmp_path, days=1, rows_per_day=200, seed=0, start_date="2026-11-01", fmt="jsonl")
    held = heldout_gold(task, tmp_path, s.days[0], 0.2)
    assert 30 <= len(held) <= 40 and not any(g["defect"] for g in held)
    assert len(heldout_gold(task, tmp_path, s.days[0], 0.2, max_prompts=10)) == 10
    other = next(t for task_name, t in TASKS.items() if task_name != name)
    with pytest.raises(ValueError, match="another task"):
        heldout_gold(other, tmp_path, s.days[0], 0.2)
