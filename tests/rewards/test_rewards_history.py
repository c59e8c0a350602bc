"""The reward model learns from the feedback of every validated night in its window, not from one night only."""
import json

import pandas as pd

from flywheel.config import load_config
from flywheel.rewards.reward_training import labelled_history


def night(day: str, ids: list[str], resolved: list[bool | None]) -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": ids, "timestamp": pd.to_datetime([f"{day}T12:00:00Z"] * len(ids), utc=True),
        "messages": [json.dumps([{"role": "user", "content": i}]) for i in ids], "completion": ["a"] * len(ids),
        "thumbs": pd.array([None] * len(ids), dtype="Int8"), "resolved": pd.array(resolved, dtype="boolean"),
    })


def store(state, tag: str, df: pd.DataFrame, passed: bool = True) -> None:
    (state / "snapshots").mkdir(parents=True, exist_ok=True)
    (state / "reports").mkdir(parents=True, exist_ok=True)
    df.to_parquet(state / "snapshots" / f"{tag}.clean.parquet", index=False)
    (state / "reports" / f"validation-{tag}.json").write_text(json.dumps({"passed": passed}))


def test_history_joins_the_labelled_rows_of_earlier_passed_nights_in_the_window(tmp_path):
    state = tmp_path / "state"
    cfg = load_config(None, overrides={"project.state_dir": str(state), "rewards.reward_model.history_days": 10})
    store(state, "aaa", night("2026-11-01", ["old"], [True]))  # 29 days before tonight: outside the window
    store(state, "bbb", night("2026-11-25", ["n1", "n1-unlabelled", "dup"], [True, None, False]))
    store(state, "ccc", night("2026-11-26", ["failed-night"], [True]), passed=False)  # its gate failed
    store(state, "eee", night("2026-12-05", ["future"], [True]))  # a later night: a rerun must not see it
    tonight = night("2026-11-30", ["t1", "dup"], [False, True])
    store(state, "ddd", tonight)

    both = labelled_history(cfg, tonight, state / "snapshots" / "ddd.clean.parquet")
    assert sorted(both["request_id"]) == ["dup", "n1", "t1"]
    assert bool(both.set_index("request_id").loc["dup", "resolved"]) is True  # tonight's copy of a row wins
    assert list(both.columns) == list(tonight.columns)

    cfg0 = load_config(None, overrides={"project.state_dir": str(state), "rewards.reward_model.history_days": 0})
    assert labelled_history(cfg0, tonight, None) is tonight
