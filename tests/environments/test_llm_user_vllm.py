"""The LLM user against a real OpenAI-compatible server: vLLM (from .venv-vllm) serving a tiny model built offline.

The user model is ``models.tiny`` fitted for a few seconds to answer as a customer: an opening about the task, then
``###STOP###`` once the agent says it is done (an untrained tiny model only repeats the last prompt token, a
newline, which the simulator rightly refuses as an empty reply). One server for the module, started and stopped by
its PID with ``flywheel.serving``. The simulator's requests and the server's answers are recorded by httpx event
hooks on the client it is given; the last test stops the server in the middle of an episode, so it must stay last.
"""
import json
import os
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from environments import load_builtin
from environments.env import Environment
from environments.users import GREETING, STOP, LLMUser, user_system_prompt

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

DOMAIN = load_builtin("acme_shop")
TASK = DOMAIN.task("000_status")  # one get_order, then "shipped" must be said (reward basis DB + COMMUNICATE)
SERVED = "user-sim"
MAX_TOKENS = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_call(name, **arguments) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def final_answer(task) -> str:
    return f"All done. {' '.join(task.evaluation_criteria.communicate_info)} Have a nice day."


def first_person(text: str | None) -> str:
    text = re.sub(r"\byour\b", "my", text or "")
    return re.sub(r"^You\b", "I", re.sub(r"\bYour\b", "My", text))


def user_chats() -> list[tuple[list[dict], str]]:
    """(request messages, user reply) pairs for every task, in the layout LLMUser(fold_system=True) sends."""
    layout = LLMUser("http://127.0.0.1:9/v1", SERVED, fold_system=True)
    layout.close()
    chats = []
    for task in DOMAIN.tasks:
        ins = task.user_scenario.instructions
        opening = " ".join(t for t in (first_person(ins.reason_for_call), first_person(ins.known_info)) if t)
        first = layout.opening_messages(task)
        chats.append((first, opening))
        chats.append((first + [{"role": "assistant", "content": opening},
                               {"role": "user", "content": final_answer(task)}], STOP))
    return chats


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """A tiny Llama (hidden 64, 2 layers) fitted for 200 steps on ``user_chats`` (~25 s on one core)."""
    import torch

    from models.tiny import build_tiny_model

    chats = user_chats()
    corpus = [GREETING] + [m["content"] for messages, _ in chats for m in messages] + [a for _, a in chats]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # overhead-bound; 2 threads thrash on a shared 2-core machine
    try:
        return build_tiny_model(tmp_path_factory.mktemp("user_model") / "base", corpus, vocab_size=512,
                                hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                max_position_embeddings=1024, pretrain_chats=chats, pretrain_steps=200,
                                pretrain_batch_size=8, pretrain_lr=3e-3, seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(user_model, tmp_path_factory, vllm_api_command):
    """``vllm.entrypoints.openai.api_server`` on the user model, on 127.0.0.1; stopped by its PID at the end."""
    from flywheel import serving
    from flywheel.config.release import ServeConfig

    cfg = ServeConfig(command=vllm_api_command, served_model_name=SERVED,
                      max_model_len=1024, max_lora_rank=8, max_loras=1)
    t0 = time.time()
    info = serving.start_server(cfg, user_model, {}, tmp_path_factory.mktemp("vllm") / "vllm.log", port=free_port())
    print(f"\nvLLM healthy after {time.time() - t0:.1f} s")
    try:
        yield info
    finally:
        serving.stop_server(info.pid)
        with pytest.raises(ProcessLookupError):
            os.kill(info.pid, 0)


class Recorder:
    """An httpx client for LLMUser that keeps every request body and every answer's JSON (None if not 200)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[dict | None] = []

    def client(self, timeout_s: float = 120.0) -> httpx.Client:
        return httpx.Client(timeout=timeout_s, event_hooks={"request": [self._request], "response": [self._answer]})

    def _request(self, request: httpx.Request) -> None:
        self.requests.append(json.loads(request.content))

    def _answer(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append(response.json() if response.status_code == 200 else None)


def rendered_prompt(url: str, messages: list[dict]) -> tuple[int, str]:
    """(token count, text) of the prompt the server builds from ``messages`` with the model's chat template."""
    r = httpx.post(f"{url}/tokenize", json={"model": SERVED, "messages": messages, "add_generation_prompt": True},
                   timeout=30)
    r.raise_for_status()
    tokens = r.json()["tokens"]
    d = httpx.post(f"{url}/detokenize", json={"model": SERVED, "tokens": tokens}, timeout=30)
    d.raise_for_status()
    return len(tokens), d.json()["prompt"]


def hf_greedy(model_dir: Path, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Hugging Face greedy decoding of the same model (fp32 greedy: vLLM and HF agree)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for messages in conversations:
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def test_llm_user_plays_a_whole_episode_against_vllm(server, user_model):
    from flywheel import serving

    assert serving.is_healthy(server.url), "the server is down (the stop test must run last)"
    rec = Recorder()
    env = Environment(DOMAIN, lambda: LLMUser(f"{server.url}/v1", SERVED, max_tokens=MAX_TOKENS, fold_system=True,
                                              client=rec.client()))
    t0 = time.time()
    obs = env.reset(TASK)
    opening = obs[-1]["content"]
    assert obs[-1]["role"] == "user" and opening.strip() and STOP not in opening
    for action in TASK.evaluation_criteria.actions:  # the expert's tool calls: no user turn, no request
        _, _, terminated, truncated, info = env.step(tool_call(action.name, **action.arguments))
        assert not (terminated or truncated) and info["tool_errors"] == {}
    assert len(rec.requests) == 1
    for _ in range(3):  # the user model was fitted to say STOP to the final answer; LLMUser's max_turns is 10
        obs, reward, terminated, truncated, info = env.step(final_answer(TASK))
        if terminated or truncated:
            break
    episode_s = time.time() - t0

    # the episode ended because the served model said the stop token, and the expert is scored 1
    assert (terminated, truncated, info["end_reason"]) == (True, False, "user_stop"), info["end_reason"]
    assert reward == 1.0 and info["checks"]["DB"] and info["checks"]["COMMUNICATE"]
    assert STOP in rec.answers[-1]["choices"][0]["message"]["content"]

    # every user turn of the trajectory is a server answer, in order, and nothing else was asked of the server
    user_turns = [m["content"] for m in info["trajectory"] if m["role"] == "user"]
    assert len(user_turns) == len(rec.requests) == len(rec.answers) >= 2
    assert all(a is not None for a in rec.answers)
    assert user_turns == [a["choices"][0]["message"]["content"].strip() for a in rec.answers]
    assert all(isinstance(t, str) and t.strip() for t in user_turns)

    # each request: the served name, max_tokens (honoured), and the persona / goal prompt the simulator builds
    system = user_system_prompt(TASK)
    for body, answer in zip(rec.requests, rec.answers, strict=True):
        assert body["model"] == SERVED and body["max_tokens"] == MAX_TOKENS and body["temperature"] == 0.0
        assert answer["usage"]["completion_tokens"] <= MAX_TOKENS
        assert [m["role"] for m in body["messages"]][:1] == ["user"]
        assert body["messages"][0]["content"] == f"{system}\n\n{GREETING}"
    assert TASK.user_scenario.persona in system and TASK.user_scenario.instructions.reason_for_call in system
    assert [m["role"] for m in rec.requests[-1]["messages"]] == ["user", "assistant", "user"]
    assert rec.requests[-1]["messages"][-1]["content"] == final_answer(TASK)

    # ... and the model saw it: the server's own rendering of the first request holds the persona and the goal
    count, prompt = rendered_prompt(server.url, rec.requests[0]["messages"])
    assert count == rec.answers[0]["usage"]["prompt_tokens"]
    assert TASK.user_scenario.persona in prompt and TASK.user_scenario.instructions.reason_for_call in prompt
    # (as a system turn it would not have: this model's chat template drops the system turn, hence fold_system)
    _, unfolded = rendered_prompt(server.url, LLMUser(f"{server.url}/v1", SERVED).opening_messages(TASK))
    assert GREETING in unfolded and TASK.user_scenario.persona not in unfolded

    # the answers are the model's own: Hugging Face greedy decoding of the same conversations agrees
    assert hf_greedy(user_model, [b["messages"] for b in rec.requests], MAX_TOKENS) == user_turns
    print(f"\nepisode with {len(user_turns)} user turns from vLLM in {episode_s:.2f} s: {user_turns}")


def test_a_server_stopped_mid_episode_ends_the_episode_with_a_user_error(server):
    """Runs last: it stops the module's server."""
    from flywheel import serving

    env = Environment(DOMAIN, lambda: LLMUser(f"{server.url}/v1", SERVED, max_tokens=MAX_TOKENS, fold_system=True,
                                              timeout_s=30))
    obs = env.reset(TASK)
    assert obs[-1]["role"] == "user" and obs[-1]["content"].strip()
    action = TASK.evaluation_criteria.actions[0]
    assert env.step(tool_call(action.name, **action.arguments))[4]["tool_errors"] == {}

    assert serving.stop_server(server.pid)
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    assert not serving.is_healthy(server.url, timeout_s=2)

    obs, reward, terminated, truncated, info = env.step("Is there anything else I can help you with?")
    assert (obs, reward, terminated, truncated) == ([], 0.0, False, True)
    assert info["end_reason"].startswith("user_error: ")
    assert "request to" in info["end_reason"] and "failed" in info["end_reason"]
    assert f"{server.url}/v1/chat/completions" in info["end_reason"]
    assert env.done and info["trajectory"][-1]["role"] == "assistant"  # the agent's turn is kept, no user reply
    assert info["tool_calls"] == [{"name": action.name, "arguments": action.arguments}]
