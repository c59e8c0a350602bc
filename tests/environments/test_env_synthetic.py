"""Rejection sampling into a chat dataset: the threshold and best-of-k keep the right trajectories, the card's
counts and reward figures match the written file, tool calls survive, and an empty selection is still valid."""
import json

import pytest

from environments.acme_shop import load_domain
from environments.collect import ReferencePolicy, collect
from environments.synthetic import export, read_trajectories, reward_stats, select

DOMAIN = load_domain()
IDS = [t.id for t in DOMAIN.tasks]
TASKS = IDS[:6]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """3 trials of 6 tasks: trial 0 fails, trials 1 and 2 succeed, except on TASKS[0] where every trial fails."""
    oracle = ReferencePolicy(DOMAIN)

    def policy(messages, episode):
        if episode.trial == 0 or episode.task_id == TASKS[0]:
            return "Goodbye!"
        return oracle(messages, episode)

    path = tmp_path_factory.mktemp("collect") / "trajectories.jsonl"
    collect(DOMAIN, policy, task_ids=TASKS, trials=3, workers=3, out_path=path, model_version="policy-v3")
    return read_trajectories(path)


def _dataset(out_dir):
    return [json.loads(line) for line in (out_dir / "dataset.jsonl").read_text().splitlines()]


def _card(out_dir):
    return json.loads((out_dir / "card.json").read_text())


def test_threshold_keeps_only_good_trajectories_and_the_card_matches_the_file(collected, tmp_path):
    selection = select(collected, threshold=1.0)
    assert len(selection) == 10 and all(r["reward"] >= 1.0 for r in selection)
    assert {(r["task_id"], r["trial"]) for r in selection} == {(t, k) for t in TASKS[1:] for k in (1, 2)}
    card = export(selection, tmp_path, source="trajectories.jsonl", filters={"split": "train"})
    rows = _dataset(tmp_path)
    assert card == _card(tmp_path)
    assert card["counts"]["trajectories_in"] == len(collected) == 18
    assert card["counts"]["kept"] == len(rows) == 10
    per_task = {t: sum(r["task_id"] == t for r in rows) for t in TASKS}
    assert {t: c["kept"] for t, c in card["counts"]["per_task"].items()} == per_task
    assert {t: c["in"] for t, c in card["counts"]["per_task"].items()} == dict.fromkeys(TASKS, 3)
    assert card["source_tasks"] == sorted(TASKS) and card["source"] == "trajectories.jsonl"
    assert card["filters"] == {"threshold": 1.0, "best_of_k": False, "split": "train"}
    assert card["model_version"] == "policy-v3" and card["created_at"].endswith("+00:00")
    kept, everything = card["rewards"]["kept"], card["rewards"]["all"]
    assert (kept["count"], kept["min"], kept["mean"], kept["max"]) == (10, 1.0, 1.0, 1.0)
    assert (everything["min"], everything["max"]) == (0.0, 1.0) and everything["mean"] == pytest.approx(10 / 18)
    assert [b["count"] for b in everything["histogram"]] == [8] + [0] * 8 + [10]
    assert sum(b["count"] for b in kept["histogram"]) == len(rows)
    markdown = (tmp_path / "card.md").read_text()
    assert "| kept | 10 | 1.000 | 1.000 | 1.000 |" in markdown and f"| {TASKS[0]} | 3 | 0 |" in markdown


def test_messages_keep_tool_calls_and_tool_results(collected, tmp_path):
    export(select(collected, threshold=1.0), tmp_path, source="t")
    by_key = {(r["task_id"], r["trial"]): r for r in collected}
    for row in _dataset(tmp_path):
        messages, original = row["messages"], by_key[(row["task_id"], row["trial"])]
        assert row["reward"] == original["reward"] == 1.0
        calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])]
        answers = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
        assert calls and answers == [c["id"] for c in calls]
        assert all(c["type"] == "function" and json.loads(c["function"]["arguments"]) is not None for c in calls)
        assert messages[0]["role"] == "system" and messages[-1]["role"] in ("assistant", "tool")
        # only the simulated user's trailing stop message is dropped
        assert messages == original["messages"][:len(messages)]
        assert all(m["role"] == "user" for m in original["messages"][len(messages):])


def test_best_of_k_keeps_the_first_best_trial_of_each_task(collected, tmp_path):
    selection = select(collected, best_of_k=True)
    assert [(r["task_id"], r["trial"]) for r in selection] == sorted([(TASKS[0], 0)] + [(t, 1) for t in TASKS[1:]])
    assert select(collected, threshold=0.5, best_of_k=True).kept == [r for r in selection if r["reward"] >= 0.5]
    card = export(select(collected, threshold=1.0, best_of_k=True), tmp_path, source="t", model_version="other")
    rows = _dataset(tmp_path)
    assert len(rows) == card["counts"]["kept"] == card["counts"]["tasks_kept"] == 5
    assert len({r["task_id"] for r in rows}) == 5 and card["model_version"] == "other"
    assert card["filters"] == {"threshold": 1.0, "best_of_k": True}


def test_best_of_k_prefers_higher_reward_then_the_lowest_trial():
    pool = [{"task_id": "a", "trial": t, "reward": r, "messages": []} for t, r in enumerate([0.2, 0.7, 0.7, 0.1])]
    pool.append({"task_id": "b", "trial": 0, "reward": 0.3, "messages": []})
    assert [(r["task_id"], r["trial"]) for r in select(pool, best_of_k=True)] == [("a", 1), ("b", 0)]
    assert [(r["task_id"], r["trial"]) for r in select(pool[::-1], best_of_k=True)] == [("a", 1), ("b", 0)]
    assert [(r["task_id"], r["trial"]) for r in select(pool, threshold=0.5, best_of_k=True)] == [("a", 1)]


def test_an_empty_selection_gives_a_valid_empty_dataset_and_card(collected, tmp_path):
    selection = select(collected, threshold=2.0)
    assert len(selection) == 0
    card = export(selection, tmp_path, source="t")
    assert (tmp_path / "dataset.jsonl").read_text() == ""
    assert card == _card(tmp_path) and card["counts"]["kept"] == 0 and card["counts"]["trajectories_in"] == 18
    assert all(card["counts"]["per_task"][t]["kept"] == 0 for t in TASKS)
    assert card["rewards"]["kept"]["mean"] is None and card["rewards"]["kept"]["count"] == 0
    assert "| kept | 0 | - | - | - |" in (tmp_path / "card.md").read_text()
    nothing = export([], tmp_path / "none", source="nothing")
    assert nothing["counts"]["trajectories_in"] == 0 and nothing["source_tasks"] == []
    assert nothing["model_version"] is None
    assert (tmp_path / "none" / "dataset.jsonl").read_text() == ""


def test_reward_stats_histogram_bins():
    stats = reward_stats([0.0, 0.05, 0.1, 0.55, 0.99, 1.0])
    assert [b["count"] for b in stats["histogram"]] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert stats["min"] == 0.0 and stats["max"] == 1.0 and stats["mean"] == pytest.approx(2.69 / 6)


def test_bad_trajectory_files_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "a", "trial": 0, "reward": 1.0, "messages": []}\n\n{"task_id": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 3: trajectory lacks \['trial', 'reward', 'messages'\]"):
        read_trajectories(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        read_trajectories(path)
    with pytest.raises(FileNotFoundError, match="no such trajectories file"):
        read_trajectories(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="reward must be a number"):
        select([{"task_id": "a", "trial": 0, "reward": "1", "messages": []}])
