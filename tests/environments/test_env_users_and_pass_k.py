"""The scripted user is deterministic and always ends; pass^k is tau-bench's unbiased estimator."""
from math import comb

import pytest

from environments.env import pass_hat_k
from environments.tasks import Task
from environments.users import STOP, ScriptedUser

TASK = Task.model_validate({"id": "t", "user_scenario": {"instructions": {
    "reason_for_call": "I want to cancel my order.", "known_info": "My order id is 123456.",
    "task_instructions": "Be brief."}}})


def test_opening_is_reason_plus_known_info_and_a_statement_ends_it():
    user = ScriptedUser()
    assert user.start(TASK) == "I want to cancel my order. My order id is 123456."
    assert user.respond("Your order is cancelled.") == STOP


def test_questions_are_answered_from_known_info_until_max_turns():
    user = ScriptedUser(max_turns=3)
    user.start(TASK.model_copy(update={"user_scenario": TASK.user_scenario.model_copy(update={
        "instructions": TASK.user_scenario.instructions.model_copy(update={"known_info": None})})}))
    assert user.respond("What is your order id?") == "I don't have any more information than that."
    user = ScriptedUser(max_turns=3)
    user.start(TASK)
    assert user.respond("Which order?") == "As I said: My order id is 123456."
    assert user.respond("Which order, again?") == "As I said: My order id is 123456."
    assert user.respond("Are you sure?") == STOP


def test_string_instructions_open_the_conversation():
    task = Task.model_validate({"id": "s", "user_scenario": {"instructions": "Refund order 9."}})
    user = ScriptedUser()
    assert user.start(task) == "Refund order 9."
    assert user.respond("Why?") == "I don't have any more information than that."


def test_user_misuse_is_a_clear_error():
    with pytest.raises(ValueError, match="max_turns"):
        ScriptedUser(max_turns=0)
    with pytest.raises(RuntimeError, match="before start"):
        ScriptedUser().respond("hi")


def test_pass_hat_k_small_cases():
    assert pass_hat_k([[True, True], [False, False]], 1) == 0.5
    assert pass_hat_k([[True, False, True, True]], 1) == 0.75
    assert pass_hat_k([[True, False, True, True]], 2) == comb(3, 2) / comb(4, 2) == 0.5
    assert pass_hat_k([[True, False, True, True]], 4) == 0.0
    assert pass_hat_k([[True] * 3, [True, True, False]], 3) == 0.5
    assert pass_hat_k([[True, False, True, True]], 3) < pass_hat_k([[True, False, True, True]], 2)


def test_pass_hat_k_rejects_too_few_trials():
    with pytest.raises(ValueError, match="task #1 has 1 trials, fewer than k=2"):
        pass_hat_k([[True, True], [True]], 2)
    with pytest.raises(ValueError, match="k must be at least 1"):
        pass_hat_k([[True]], 0)
    with pytest.raises(ValueError, match="at least one task"):
        pass_hat_k([], 1)
