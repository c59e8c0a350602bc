"""The demo task and its log generator: keyword intents, gold answers, systematic errors, noisy feedback, defects."""
import gzip
import json
import random

import pytest

from demo import support_triage as d


def test_every_phrasing_is_decidable_by_keywords():
    rng = random.Random(0)
    for intent, phrasings in d.PHRASINGS.items():
        assert len(set(phrasings)) >= 15
        for p in phrasings:
            assert d.intent_of(p.format(oid="123456")) == intent, p
    for _ in range(500):
        messages, intent, oid = d.make_prompt(rng)
        text = d.user_text(messages)
        assert messages[0] == {"role": "system", "content": d.SYSTEM_PROMPT}
        assert d.intent_of(text) == intent and d.order_id_in(text) == oid and len(oid) == 6


def test_gold_completion_parses_and_grades():
    gold = d.gold_completion("refund", "123456")
    assert d.parse_completion(gold) == {"intent": "refund", "order_id": "123456"}
    assert d.is_correct(gold, "refund", "123456")
    assert not d.is_correct(d.gold_completion("refund", "123457"), "refund", "123456")
    assert not d.is_correct(gold[:-1], "refund", "123456")
    assert d.parse_completion("Sure, I can help!") is None


def test_production_model_is_systematically_wrong_and_feedback_noisy(tmp_path):
    s = d.generate_logs(tmp_path, days=1, rows_per_day=4000, seed=3, defect_rate=0.0, start_date="2026-11-01")
    assert s.accuracy_by_kind["cancel_order"] < 0.2 and s.accuracy_by_kind["track_order"] > 0.8
    gold = d.load_gold(tmp_path)
    cancel_wrong = [g for g in gold if g["intent"] == "cancel_order" and not g["logged_correct"]]
    as_refund = sum((d.parse_completion(g["logged_completion"]) or {}).get("intent") == "refund" for g in cancel_wrong)
    assert as_refund / len(cancel_wrong) > 0.8
    rows = [json.loads(line) for f in sorted(tmp_path.glob("dt=*/*.jsonl.gz"))
            for line in gzip.decompress(f.read_bytes()).splitlines()]
    correct = {g["request_id"]: g["logged_correct"] for g in gold}
    agree = sum(r["feedback"]["resolved"] == correct[r["request_id"]] for r in rows) / len(rows)
    assert 0.85 < agree < 0.95                       # 10 % label noise by default
    thumbs = sum(r["feedback"]["thumbs"] is not None for r in rows) / len(rows)
    assert 0.25 < thumbs < 0.35


def test_generation_is_deterministic_and_gold_stays_outside_partitions(tmp_path):
    a = d.generate_logs(tmp_path / "a", days=2, rows_per_day=300, seed=5, start_date="2026-11-01", fmt="jsonl")
    b = d.generate_logs(tmp_path / "b", days=2, rows_per_day=300, seed=5, start_date="2026-11-01", fmt="jsonl")
    assert a.defects == b.defects
    for f in sorted((tmp_path / "a").rglob("*.jsonl")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["_defects", "_gold", "dt=2026-11-01", "dt=2026-11-02"]
    assert sum(1 for _ in (tmp_path / "a").glob("dt=*/*")) == a.objects == 4


def test_bad_arguments_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        d.generate_logs(tmp_path, fmt="csv")
    with pytest.raises(ValueError, match="defect_kinds"):
        d.generate_logs(tmp_path, defect_kinds=("nope",))
