"""Production agent transcripts of acme_shop: clean through the real observe + validate, every completion a
parseable turn that the tiny template renders back, feedback that follows the environment's reward, and a
production success rate in the range the flywheel has room to improve."""
import json
from collections import defaultdict
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from demo.agent_logs import MISTAKES, TASK, generate_agent_logs, load_agent_gold
from environments.acme_shop.tools import TOOLS
from environments.tools import parse_tool_calls
from flywheel.config.data import SourceConfig, ValidateConfig
from models.tiny import train_tokenizer
from tasks.observe import observe
from tasks.validate import validate

START = "2026-11-01"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    out = tmp_path_factory.mktemp("agent") / "logs"
    return out, generate_agent_logs(out, days=2, conversations_per_day=80, start=START, seed=3)


def rows_of(out: Path) -> list[dict]:
    return [orjson.loads(line) for f in sorted(out.glob("dt=*/part-*.jsonl")) for line in f.read_bytes().splitlines()]


def conversations(rows: list[dict]) -> dict[str, list[dict]]:
    by_id = defaultdict(list)
    for row in rows:
        by_id[row["metadata"]["conversation_id"]].append(row)
    return {cid: sorted(turns, key=lambda r: r["metadata"]["turn"]) for cid, turns in by_id.items()}


def test_rows_pass_the_real_observe_and_validate(logs, state_dir):
    out, summary = logs
    obs = observe(SourceConfig(uri=str(out)), state_dir)
    assert obs.new_data and obs.rows == summary.rows and obs.objects_read == summary.objects == 4  # _gold/ unread
    val = validate(obs.snapshot_uri, state_dir, ValidateConfig(), snapshot_hash=obs.snapshot_hash)
    assert val.passed and val.rows_quarantined == 0 and val.rows_clean == summary.rows
    clean = pq.read_table(val.clean_uri).to_pylist()
    assert {r["task"] for r in clean} == {TASK}
    chats = [json.loads(r["messages"]) for r in clean]
    assert {m["role"] for chat in chats for m in chat} == {"system", "user", "assistant", "tool"}
    calls = [m for chat in chats for m in chat if m.get("tool_calls")]
    assert calls and all(m["content"] == "" for m in calls)  # "" (never None) next to tool calls
    tools = [m for chat in chats for m in chat if m["role"] == "tool"]
    assert tools and all(m["tool_call_id"] for m in tools)
    assert any(r["escalated"] for r in clean) and any(r["resolved"] for r in clean)
    assert val.pii["card"] == val.pii["phone"] == 0  # ids, amounts and tracking numbers are not taken for PII
    gold_ids = {g["conversation_id"] for g in load_agent_gold(out)}
    assert {json.loads(r["metadata"])["conversation_id"] for r in clean} == gold_ids  # the ids survive the scrub


def test_rows_are_one_per_model_call_in_their_day(logs):
    out, summary = logs
    rows = rows_of(out)
    assert len(rows) == summary.rows and len({r["request_id"] for r in rows}) == len(rows)
    for f in out.glob("dt=*/part-*.jsonl"):
        day = f.parent.name.removeprefix("dt=")
        assert all(orjson.loads(line)["timestamp"].startswith(day) for line in f.read_bytes().splitlines())
    for turns in conversations(rows).values():
        assert [r["metadata"]["turn"] for r in turns] == list(range(len(turns)))
        assert [r["timestamp"] for r in turns] == sorted(r["timestamp"] for r in turns)
        for before, after in zip(turns, turns[1:]):  # each call's conversation extends the previous one
            assert after["messages"][:len(before["messages"])] == before["messages"]


def test_completions_parse_and_are_what_the_template_renders(logs):
    out, _ = logs
    tok = train_tokenizer(["<tool_call>", "order"], vocab_size=300)
    names = {fn.__name__ for fn in TOOLS}
    for turns in conversations(rows_of(out)).values():
        for row, following in zip(turns, turns[1:] + [None]):
            parsed = parse_tool_calls(row["completion"])
            assert parsed.errors == [], row["completion"]
            if parsed.tool_calls:
                assert parsed.content == "" and {c["function"]["name"] for c in parsed.tool_calls} <= names
            if following is None:
                continue
            message = following["messages"][len(row["messages"])]  # this turn, as the next call's history logs it
            text = tok.apply_chat_template([{"role": "user", "content": "x"}, message], tokenize=False)
            assert text == f"<|im_start|>user\nx<|im_end|><|im_start|>assistant\n{row['completion']}<|im_end|>"


def test_feedback_follows_the_episode_outcome(logs):
    out, summary = logs
    gold = {g["conversation_id"]: g for g in load_agent_gold(out)}
    by_conversation = conversations(rows_of(out))
    assert set(gold) == set(by_conversation) and len(gold) == summary.conversations
    for cid, turns in by_conversation.items():
        g, feedback = gold[cid], turns[0]["feedback"]
        assert all(r["feedback"] == feedback for r in turns) and g["turns"] == len(turns)
        assert feedback["escalated"] == (g["end_reason"] == "transfer")
        assert feedback["resolved"] == (g["reward"] == 1.0 and not feedback["escalated"])
        if "thumbs" in feedback:
            assert feedback["thumbs"] == (1 if feedback["resolved"] else -1)
        if g["mistake"] is None:
            assert g["reward"] == 1.0, g  # the reference behaviour solves every train task
    assert any("thumbs" in turns[0]["feedback"] for turns in by_conversation.values())
    assert set(summary.mistakes) <= set(MISTAKES) and sum(summary.mistakes.values()) > 0
    assert summary.successes == sum(g["reward"] == 1.0 for g in gold.values())


def test_production_success_rate_at_the_default_error_rate(tmp_path):
    summary = generate_agent_logs(tmp_path / "logs", start=START)
    assert summary.conversations == 600 and len(summary.success_rate_by_day) == 3
    assert 0.4 <= summary.success_rate <= 0.85, summary.to_dict()
    assert set(summary.mistakes) == set(MISTAKES)
    perfect = generate_agent_logs(tmp_path / "perfect", days=1, conversations_per_day=50, start=START, error_rate=0)
    assert perfect.success_rate == 1.0 and perfect.mistakes == {}


def test_same_seed_same_bytes(tmp_path):
    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_agent_logs(tmp_path / name, days=1, conversations_per_day=40, start=START, seed=seed)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="error_rate"):
        generate_agent_logs(tmp_path, error_rate=1.5)


def test_styled_customers_give_the_llm_user_style_examples(logs):
    from demo.agent_logs import STYLE_RATES
    from environments.user_styles import IMPATIENT, PANICKED, classify, style_examples

    out, summary = logs
    gold = load_agent_gold(out)
    styled = {g["conversation_id"]: g["user_style"] for g in gold if g["user_style"]}
    share = len(styled) / len(gold)
    assert abs(share - sum(STYLE_RATES.values())) < 0.1, share
    for cid, turns in conversations(rows_of(out)).items():
        opening = next(m["content"] for m in turns[0]["messages"] if m["role"] == "user")
        styles = classify(opening)
        if cid in styled:  # the styled opening is what the classifier of real logs sees
            assert styled[cid] in styles, (styled[cid], opening)
        else:
            assert IMPATIENT not in styles and PANICKED not in styles, opening
    examples = style_examples(rows_of(out), per_style=3, seed=0)
    assert len(examples[IMPATIENT]) == len(examples[PANICKED]) == 3
