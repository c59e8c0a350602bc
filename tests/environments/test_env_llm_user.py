"""The LLM user talks to an OpenAI-compatible endpoint with flipped roles; its failure ends the episode."""
import pytest

from environments.acme_shop import load_domain
from environments.env import Environment
from environments.users import GREETING, STOP, LLMUser, UserError
from flywheel.rewards.replay_server import ReplayServer

DOMAIN = load_domain()
TASK = DOMAIN.tasks[0]
SAID = "I think the answer is quite good, score: 4"  # what the replay server's "malformed" action answers


@pytest.fixture(scope="module")
def running():
    with ReplayServer() as server:
        yield server


@pytest.fixture
def server(running):
    """The module's replay server with an empty script and no recorded requests."""
    running.script, running.requests[:], running.auth[:] = [], [], []
    return running


def test_llm_user_sends_flipped_roles_and_the_instructions(server):
    server.script = ["malformed", "malformed"]
    user = LLMUser(server.base_url, model="user-sim", api_key="k123")
    assert user.start(TASK) == SAID
    assert user.respond("Which order do you mean?") == SAID
    first, second = server.requests
    assert server.auth == ["Bearer k123", "Bearer k123"]
    assert first["model"] == "user-sim"
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][1]["content"] == GREETING
    assert TASK.user_scenario.instructions.reason_for_call in first["messages"][0]["content"]
    assert STOP in first["messages"][0]["content"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][-1]["content"] == "Which order do you mean?"


def test_llm_user_stops_after_max_turns_without_a_request(server):
    server.script = ["malformed"]
    user = LLMUser(server.base_url, model="m", max_turns=1)
    user.start(TASK)
    assert user.respond("Anything else?") == STOP
    assert server.calls == 1


@pytest.mark.parametrize("action, fragment", [("500", "HTTP 500"), ("429", "HTTP 429"), ("echo", "empty reply")])
def test_endpoint_failures_are_user_errors(server, action, fragment):
    server.script = [action]
    with pytest.raises(UserError, match=fragment):
        LLMUser(server.base_url, model="m").start(TASK)


def test_unreachable_endpoint_is_a_user_error():
    with ReplayServer() as server:
        url = server.base_url
    with pytest.raises(UserError, match="request to .* failed"):
        LLMUser(url, model="m", timeout_s=2).start(TASK)


def test_a_failing_user_ends_the_episode_truncated_with_the_reason(server):
    server.script = ["malformed", "500"]
    env = Environment(DOMAIN, lambda: LLMUser(server.base_url, model="m"))
    obs = env.reset(TASK)
    assert obs[-1] == {"role": "user", "content": SAID}
    obs, reward, terminated, truncated, info = env.step("Could you tell me your order id?")
    assert (obs, reward, terminated, truncated) == ([], 0.0, False, True)
    assert info["end_reason"].startswith("user_error: ") and "HTTP 500" in info["end_reason"]
    assert env.done
