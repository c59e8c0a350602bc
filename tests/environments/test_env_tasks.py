"""tau2-bench tasks.json files load unchanged: unknown keys ignored, string or object instructions."""
import json

import pytest

from environments.tasks import load_policy, load_split, load_tasks

TAU2_SAMPLE = [
    {"id": "0", "description": {"purpose": "cancel", "relevant_policies": None, "notes": None},
     "user_scenario": {"persona": None, "instructions": {
         "domain": "airline", "reason_for_call": "Cancel my reservation.", "known_info": "My id is X1.",
         "unknown_info": None, "task_instructions": "Be brief."}, "extra_user_key": 1},
     "initial_state": None,
     "evaluation_criteria": {
         "actions": [{"action_id": "0_0", "requestor": "assistant", "name": "cancel", "arguments": {"id": "X1"},
                      "info": None, "compare_args": None, "unknown": True}],
         "communicate_info": ["cancelled"], "nl_assertions": ["The agent is polite."],
         "reward_basis": ["DB", "ACTION", "COMMUNICATE", "NL_ASSERTION"]}},
    {"id": 1, "user_scenario": {"instructions": "You want a refund for order 9."},
     "evaluation_criteria": {"actions": None, "communicate_info": None, "reward_basis": ["ENV_ASSERTION", "DB"]}},
]


def test_tau2_sample_loads_with_unknown_keys_and_both_instruction_forms(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(TAU2_SAMPLE))
    first, second = load_tasks(path)
    assert first.id == "0" and second.id == "1"
    assert first.user_scenario.instructions.reason_for_call == "Cancel my reservation."
    assert first.user_scenario.instructions.domain == "airline"
    assert first.evaluation_criteria.actions[0].arguments == {"id": "X1"}
    assert first.supported_basis == ["DB", "ACTION", "COMMUNICATE"]
    assert first.unsupported_basis == ["NL_ASSERTION"]
    assert second.user_scenario.instructions.task_instructions == "You want a refund for order 9."
    assert second.evaluation_criteria.actions == [] and second.evaluation_criteria.communicate_info == []
    assert second.supported_basis == ["DB"] and second.unsupported_basis == ["ENV_ASSERTION"]


def test_errors_name_the_file_and_the_task(tmp_path):
    path = tmp_path / "tasks.json"
    bad = [dict(TAU2_SAMPLE[0], id="7", evaluation_criteria={"reward_basis": ["VIBES"]})]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"(?s)tasks.json: task 7:.*reward_basis"):
        load_tasks(path)
    path.write_text(json.dumps([TAU2_SAMPLE[0], TAU2_SAMPLE[0]]))
    with pytest.raises(ValueError, match=r"duplicate task ids \['0'\]"):
        load_tasks(path)
    path.write_text(json.dumps({"id": "0"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_tasks(path)


def test_split_checks_ids_against_the_tasks(tmp_path):
    tasks_path, split_path = tmp_path / "tasks.json", tmp_path / "split.json"
    tasks_path.write_text(json.dumps(TAU2_SAMPLE))
    tasks = load_tasks(tasks_path)
    split_path.write_text(json.dumps({"train": ["0"], "test": [1]}))
    assert load_split(split_path, tasks) == {"train": ["0"], "test": ["1"]}
    split_path.write_text(json.dumps({"train": ["0"], "test": ["1", "42"]}))
    with pytest.raises(ValueError, match=r"split 'test' names unknown task ids \['42'\]"):
        load_split(split_path, tasks)


def test_policy_is_read_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "policy.md").write_text("# Rules\nBe nice.")
    assert load_policy(tmp_path / "policy.md").startswith("# Rules")
    with pytest.raises(FileNotFoundError, match="nope.md: no policy file"):
        load_policy(tmp_path / "nope.md")
