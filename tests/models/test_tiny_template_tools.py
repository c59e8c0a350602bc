"""The tiny template's agent turns: tool calls render as the ``<tool_call>`` text the environment parses, tool
results as ``tool`` turns, and every chat without tool calls renders byte for byte as before."""
import json

import pytest

from environments.acme_shop import load_domain
from environments.collect import Episode, ReferencePolicy
from environments.env import Environment
from environments.tools import parse_tool_calls
from environments.users import ScriptedUser
from models.tiny import CHAT_TEMPLATE, train_tokenizer

OLD_TEMPLATE = (  # the template before agent turns, kept verbatim: chats without tool calls must not change
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}<|im_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CALLS = [("get_order", {"order_id": "104233"}),
         ("change_address", {"order_id": "104233", "address": "12 Oak Street, Fairview"})]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["order 104233 is shipped", "<tool_call> get_order </tool_call>"], vocab_size=300)


def _call(index: int, name: str, arguments: dict) -> dict:
    return {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _assistant_text(tok, message: dict) -> str:
    """The text between the assistant turn's opening and its ``<|im_end|>``."""
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, message], tokenize=False)
    prefix = "<|im_start|>user\nhi<|im_end|><|im_start|>assistant\n"
    assert text.startswith(prefix) and text.endswith("<|im_end|>"), text
    return text[len(prefix):-len("<|im_end|>")]


@pytest.mark.parametrize("content", ["", None, "Let me check that."])
def test_tool_calls_round_trip_through_parse_tool_calls(tok, content):
    message = {"role": "assistant", "content": content,
               "tool_calls": [_call(i, name, args) for i, (name, args) in enumerate(CALLS)]}
    text = _assistant_text(tok, message)
    blocks = [f'<tool_call>{json.dumps({"name": n, "arguments": a})}</tool_call>' for n, a in CALLS]
    assert text == "\n".join(([content] if content else []) + blocks)  # ReferencePolicy's format exactly
    parsed = parse_tool_calls(text)
    assert parsed.errors == [] and parsed.content == (content or "")
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls] == CALLS


def test_arguments_string_is_inserted_verbatim_and_a_dict_is_serialised(tok):
    raw = '{"order_id":"104233" ,  "reason": "damaged"}'  # odd spacing survives: no re-serialisation
    text = _assistant_text(tok, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "refund_order", "arguments": raw}},
        {"id": "b", "type": "function", "function": {"name": "get_order", "arguments": {"order_id": "1 < 2"}}}]})
    assert text == (f'<tool_call>{{"name": "refund_order", "arguments": {raw}}}</tool_call>\n'
                    '<tool_call>{"name": "get_order", "arguments": {"order_id": "1 < 2"}}</tool_call>')


def test_tool_turn_renders_as_a_tool_turn(tok):
    messages = [{"role": "system", "content": "policy"}, {"role": "user", "content": "where is 104233?"},
                {"role": "assistant", "content": "", "tool_calls": [_call(0, *CALLS[0])]},
                {"role": "tool", "tool_call_id": "call_0", "content": '{"status": "shipped"}'}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>user\nwhere is 104233?<|im_end|>"
                    '<|im_start|>assistant\n<tool_call>{"name": "get_order", "arguments": {"order_id": "104233"}}'
                    "</tool_call><|im_end|>"
                    '<|im_start|>tool\n{"status": "shipped"}<|im_end|><|im_start|>assistant\n')


PLAIN_CHATS = [
    [{"role": "system", "content": "You triage."}, {"role": "user", "content": "Order 123456 is late."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": '{"intent": "x"}'},
     {"role": "user", "content": "b\nc"}],
    [{"role": "user", "content": None}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "no calls", "tool_calls": []}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "none", "tool_calls": None}],
]


@pytest.mark.parametrize("chat", PLAIN_CHATS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chats_without_tool_calls_render_as_before(tok, chat, generation_prompt):
    assert tok.chat_template == CHAT_TEMPLATE
    new = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
    old = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt,
                                  chat_template=OLD_TEMPLATE)
    assert new == old


def test_rendered_reference_trajectory_is_what_the_policy_wrote(tok):
    """Every assistant turn of a real acme_shop episode renders as the exact text the policy emitted."""
    domain = load_domain()
    policy, env = ReferencePolicy(domain), Environment(domain, ScriptedUser)
    task_id = "040_cancel_and_refund"  # five calls and a closing message
    env.reset(task_id)
    written, done = [], False
    while not done:
        written.append(policy(list(env.messages), Episode(task_id, 0, 0)))
        _, reward, terminated, truncated, info = env.step(written[-1])
        done = terminated or truncated
    assert reward == 1.0
    rendered = [_assistant_text(tok, m) for m in info["trajectory"] if m["role"] == "assistant"]
    assert rendered == written and len(written) == 6


def test_renumber_keeps_ids_in_tool_call_arguments_in_step_with_the_text():
    import random

    from models.tiny import renumber

    messages = [{"role": "user", "content": "cancel order 123456 please"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c0", "type": "function",
                     "function": {"name": "get_order", "arguments": '{"order_id": "123456"}'}}]},
                {"role": "tool", "tool_call_id": "c0", "content": '{"order_id": "123456", "status": "placed"}'}]
    answer = '<tool_call>{"name": "cancel_order", "arguments": {"order_id": "123456"}}</tool_call>'
    new_messages, new_answer = renumber(random.Random(3), messages, answer)
    fresh = json.loads(new_messages[1]["tool_calls"][0]["function"]["arguments"])["order_id"]
    assert fresh != "123456"
    assert fresh in new_messages[0]["content"] and fresh in new_messages[2]["content"] and fresh in new_answer
