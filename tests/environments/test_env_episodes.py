"""Whole episodes on Acme Shop: the expert scores 1 on every task, doing nothing or a wrong write scores 0,
bad tool calls are recorded without crashing, and episodes end by user stop, hand-off or the step limit."""
import json

import pytest

from environments.acme_shop import load_domain
from environments.acme_shop.make_tasks import FOLDER, make_all
from environments.env import Environment
from environments.users import STOP, ScriptedUser

DOMAIN = load_domain()
IDS = [t.id for t in DOMAIN.tasks]


def _env(max_steps=30):
    return Environment(DOMAIN, ScriptedUser, max_steps=max_steps)


def _tool_call(name, **arguments):
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def _wrong_order(task):
    """A pending order that the task does not touch."""
    named = {a.arguments.get("order_id") for a in task.evaluation_criteria.actions}
    rows = DOMAIN.db.query("SELECT order_id FROM orders WHERE status = 'pending' ORDER BY order_id")
    return next(r["order_id"] for r in rows if r["order_id"] not in named)


def _play(env, task, wrong_write=False, do_actions=True):
    obs = env.reset(task)
    assert [m["role"] for m in obs] == ["system", "user"]
    actions = task.evaluation_criteria.actions if do_actions else []
    result = None
    for index, action in enumerate(actions):
        if wrong_write and index == len(actions) - 1:
            result = env.step(_tool_call("cancel_order", order_id=_wrong_order(task), reason="no_longer_needed"))
            assert result[4]["tool_errors"] == {}
        result = env.step(_tool_call(action.name, **action.arguments))
        assert result[4]["tool_errors"] == {}, result[0]
        if result[2]:
            return result
    if wrong_write and not actions:
        env.step(_tool_call("cancel_order", order_id=_wrong_order(task), reason="no_longer_needed"))
    info = " ".join(task.evaluation_criteria.communicate_info)
    return env.step(f"All done. {info} Have a nice day.")


def test_the_task_set_is_big_and_graded():
    assert len(DOMAIN.tasks) >= 40
    lengths = {len(t.evaluation_criteria.actions) for t in DOMAIN.tasks}
    assert min(lengths) == 1 and max(lengths) == 5
    assert any(a.name == "escalate_to_human" for t in DOMAIN.tasks for a in t.evaluation_criteria.actions)
    assert sorted(DOMAIN.split["train"] + DOMAIN.split["test"]) == sorted(IDS)


def test_the_committed_files_are_what_the_generator_writes():
    db, tasks, split = make_all()
    for name, data in (("db.json", db), ("tasks.json", tasks), ("split.json", split)):
        assert json.loads((FOLDER / name).read_text()) == data, f"{name} is stale: run make_tasks"
    assert make_all() == (db, tasks, split)
    assert make_all(seed=8)[1] != tasks


@pytest.mark.parametrize("task_id", IDS)
def test_expert_scores_one_empty_and_wrong_write_score_zero(task_id):
    task, env = DOMAIN.task(task_id), _env()
    obs, reward, terminated, truncated, info = _play(env, task)
    assert (reward, terminated, truncated) == (1.0, True, False), info["checks"]
    assert info["end_reason"] in ("user_stop", "transfer")
    env.reset(task)
    _, reward, terminated, _, info = env.step("Goodbye!")
    assert terminated and reward == 0.0 and info["end_reason"] == "user_stop"
    _, reward, terminated, _, info = _play(env, task, wrong_write=True)
    assert terminated and reward == 0.0 and info["checks"]["DB"] is False


def test_info_carries_an_openai_trajectory_and_checks():
    task = next(t for t in DOMAIN.tasks if t.id.endswith("_tracking"))
    env = _env()
    obs, reward, *_ , info = _play(env, task)
    roles = [m["role"] for m in info["trajectory"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    call = info["trajectory"][2]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "track_order"
    assert info["trajectory"][3]["tool_call_id"] == call["id"]
    assert info["trajectory"][-1]["content"] == STOP
    assert info["checks"]["COMMUNICATE"] is True and info["checks"]["DB"] is True
    system = info["trajectory"][0]["content"]
    assert "escalate_to_human" in system and "Refund an order" in system
    assert info["tool_calls"] == [{"name": "track_order", "arguments": task.evaluation_criteria.actions[0].arguments}]


def test_bad_tool_calls_are_recorded_and_the_episode_goes_on():
    task = next(t for t in DOMAIN.tasks if t.id.endswith("_refund_over_limit"))
    order_id = task.evaluation_criteria.actions[0].arguments["order_id"]
    env = _env()
    env.reset(task)
    obs, *_ = env.step('<tool_call>{"name": "get_order", "arguments": {"order_id": </tool_call>')
    assert obs[0]["role"] == "tool" and "invalid JSON" in obs[0]["content"]
    recorded = env.messages[-2]["tool_calls"][0]
    assert recorded["function"]["name"] == "invalid_tool_call" and recorded["id"] == obs[0]["tool_call_id"]
    obs, *_ = env.step(_tool_call("delete_everything"))
    assert "unknown tool 'delete_everything'" in obs[0]["content"]
    obs, *_ = env.step(_tool_call("get_order", order_id=int(order_id)))
    assert "argument 'order_id'" in obs[0]["content"]
    obs, *_ = env.step(_tool_call("refund_order", order_id=order_id, reason="damaged"))
    assert "above the refund limit" in obs[0]["content"]
    obs, reward, terminated, _, info = env.step(
        _tool_call("get_order", order_id=order_id) + _tool_call("escalate_to_human", order_id=order_id, summary="x"))
    assert [m["role"] for m in obs] == ["tool", "tool"] and "transferred" in obs[1]["content"]
    assert terminated and reward == 1.0 and info["end_reason"] == "transfer"
    assert info["tool_errors"] == {"parse_error": 1, "unknown_tool": 1, "wrong_type": 1, "tool_error": 1}
    assert sum(m["role"] == "tool" and m["content"].startswith("Error:") for m in info["trajectory"]) == 4


def test_dict_messages_and_truncation_at_max_steps():
    task = DOMAIN.tasks[0]
    env = _env(max_steps=2)
    env.reset(task)
    order_id = task.evaluation_criteria.actions[0].arguments["order_id"]
    function = {"name": "get_order", "arguments": json.dumps({"order_id": order_id})}
    call = {"id": "x1", "type": "function", "function": function}
    message = {"role": "assistant", "content": "", "tool_calls": [call]}
    obs, reward, terminated, truncated, _ = env.step(message)
    assert obs[0]["tool_call_id"] == "x1" and (reward, terminated, truncated) == (0.0, False, False)
    _, reward, terminated, truncated, info = env.step(message)
    assert (reward, terminated, truncated) == (0.0, False, True) and info["end_reason"] == "max_steps"
    with pytest.raises(RuntimeError, match="the episode is over"):
        env.step("hello")


def test_two_environments_on_one_domain_are_isolated():
    cancel = next(t for t in DOMAIN.tasks if t.id.endswith("_cancel"))
    a, b = _env(), _env()
    a.reset(cancel)
    b.reset(cancel)
    for action in cancel.evaluation_criteria.actions:
        a.step(_tool_call(action.name, **action.arguments))
    assert a.db.state_hash() != b.db.state_hash() == DOMAIN.db.state_hash()
    _, reward, *_ = b.step("Goodbye!")
    assert reward == 0.0


ESCALATIONS = [t.id for t in DOMAIN.tasks if t.evaluation_criteria.actions[-1].name == "escalate_to_human"]


@pytest.mark.parametrize("task_id", ESCALATIONS)
def test_escalating_about_the_wrong_order_fails_the_action_check(task_id):
    task, env = DOMAIN.task(task_id), _env()
    env.reset(task)
    *before, escalate = task.evaluation_criteria.actions
    for action in before:
        env.step(_tool_call(action.name, **action.arguments))
    _, reward, terminated, _, info = env.step(_tool_call("escalate_to_human", order_id=_wrong_order(task),
                                                         summary=escalate.arguments["summary"]))
    assert terminated and info["end_reason"] == "transfer" and reward == 0.0
    assert info["checks"]["DB"] is True and info["checks"]["ACTION"] is False
    assert info["checks"]["ACTION_missing"] == [escalate.action_id]


def test_a_task_whose_reference_action_fails_is_rejected_at_reset():
    task = DOMAIN.tasks[0].model_copy(deep=True)
    task.evaluation_criteria.actions[0].arguments = {"order_id": "000000"}
    with pytest.raises(ValueError, match=rf"task {task.id}: reference action 0 \(get_order\) fails: .*no order"):
        _env().reset(task)
