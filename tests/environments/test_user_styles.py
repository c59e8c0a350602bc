"""Style examples come from real user turns: transparent cues, repetition within one conversation, a seeded
selection with PII scrubbed, and the LLM user's prompt shows them only for its chosen style."""
import json
import random

import httpx
import pytest

from environments.tasks import Task
from environments.user_styles import (
    STYLES,
    cap,
    classify,
    classify_conversation,
    conversations,
    persona_style,
    select_examples,
    style_examples,
)
from environments.users import LLMUser, user_system_prompt

TASK = Task.model_validate({"id": "t", "user_scenario": {"persona": "A polite customer.", "instructions": {
    "reason_for_call": "You want to cancel order 123456.", "known_info": "Your order id is 123456."}}})


def chat(*user_turns: str, system: str = "You are a support agent.") -> list[dict]:
    """An OpenAI chat with an agent reply between the user turns."""
    messages = [{"role": "system", "content": system}]
    for text in user_turns:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "Let me check."}]
    return messages[:-1]


def row(conversation_id: str | None, messages: list[dict]) -> dict:
    metadata = {"conversation_id": conversation_id} if conversation_id else {}
    return {"request_id": "r", "messages": messages, "completion": "ok", "metadata": metadata}


@pytest.mark.parametrize("text, styles", [
    ("I'm still waiting for order 482913, it's been two weeks", ("impatient",)),
    ("How long does a refund take?? I already sent the item back", ("impatient",)),
    ("any update on my parcel yet?", ("impatient",)),
    ("Refund order 448120 right now.", ("impatient",)),
    ("hey cancel 551203 asap", ("impatient", "panicked")),
    ("URGENT: my card was charged three times", ("panicked",)),
    ("Please help, someone used my account!!!", ("impatient", "panicked")),
    ("WHY HAS NOBODY ANSWERED ME", ("panicked",)),
    ("Help! My order went to the wrong house", ("panicked",)),
    ("please help me! my parcel was stolen", ("panicked",)),
    ("Where is order 310245? Please help.", ("neutral",)),       # a polite sign-off, not a cry for help
    ("Can you help me change the address on order 318220?", ("neutral",)),
    ("I'd like a refund for order 902114, the size was wrong. Thanks.", ("neutral",)),
    ("The USB cable in my order is missing", ("neutral",)),
])
def test_each_turn_is_classified_by_its_cues(text, styles):
    assert classify(text) == styles


def test_repetition_is_a_near_verbatim_earlier_turn_of_the_same_conversation():
    turns = ["My order 123456 has not arrived.", "Is it shipped?", "my order 123456 has NOT arrived",
             "My order 123456 has not arrived yet.", "yes", "yes"]
    assert classify_conversation(turns) == [("neutral",), ("neutral",), ("repetitive",), ("repetitive",),
                                            ("neutral",), ("neutral",)]  # "yes" twice is too short to count
    rows = [row("a", chat("My order 123456 has not arrived.")), row("b", chat("My order 123456 has not arrived."))]
    assert select_examples(conversations(rows))["repetitive"] == []   # the same words in two conversations


def test_a_conversation_is_its_longest_row_and_rows_without_an_id_stand_alone():
    first, second = "Where is order 123456?", "Still nothing, where is order 123456?"
    rows = [row("c1", chat(first)), row("c1", chat(first, second)),
            {"messages": json.dumps(chat(first)), "completion": "ok", "metadata": "{}"},   # a snapshot row
            {"messages": [{"role": "user", "content": [{"type": "text", "text": second}]}], "completion": "ok"}]
    assert conversations(rows) == [[first, second], [first], [second]]


def logged_rows() -> list[dict]:
    turns = [["I'm still waiting for my refund", "I'm still waiting for my refund!!"],
             ["Where is my parcel? Any update?", "hello?"],
             ["URGENT my card was charged twice, call me on +1 415-555-0134!!!"],
             ["asap please, write to jo.lee@example.com"],
             ["Please cancel order 778812.", "Thanks, that's all."],
             ["Hurry up, I have been waiting all week", "Hurry up, I have been waiting all week"]]
    return [row(f"conv-{n}", chat(*t)) for n, t in enumerate(turns)]


def test_selection_is_deterministic_deduplicated_capped_and_scrubbed():
    rows = logged_rows()
    examples = style_examples(rows, per_style=2, max_chars=60, seed=7)
    shuffled = random.Random(1).sample(rows, len(rows))
    assert style_examples(shuffled, per_style=2, max_chars=60, seed=7) == examples   # any input order
    assert set(examples) == set(STYLES)
    assert all(len(found) <= 2 and len(set(found)) == len(found) for found in examples.values())
    assert all(len(text) <= 60 for found in examples.values() for text in found)
    everything = select_examples(conversations(rows), per_style=10, max_chars=200)
    assert sorted(everything["repetitive"]) == ["Hurry up, I have been waiting all week",
                                        "I'm still waiting for my refund!!"]
    assert "Hurry up, I have been waiting all week" in everything["impatient"]   # once, though said twice
    assert len([t for t in everything["impatient"] if t.startswith("Hurry")]) == 1
    panicked = " ".join(everything["panicked"])
    assert "[PHONE]" in panicked and "[EMAIL]" in panicked
    assert "555" not in panicked and "example.com" not in panicked
    assert sorted(everything["neutral"]) == ["Please cancel order 778812.", "Thanks, that's all.", "hello?"]


def test_a_cut_never_leaves_half_an_email():
    text = "I am panicking, URGENT, email me at " + "someone.with.a.long.name@example.com"
    [example] = select_examples([[text]], max_chars=50)["panicked"]
    assert example == "I am panicking, URGENT, email me at [EMAIL]"
    assert cap("one two three four", 12) == "one two…"


def test_persona_names_a_style():
    assert persona_style("An impatient customer who hates waiting.") == "impatient"
    assert persona_style("Panicking about a lost parcel") == "panicked"
    assert persona_style("Someone who repeats every question") == "repetitive"
    assert persona_style("A polite customer of Acme Shop.") is None
    assert persona_style(None) is None


def capture(**kwargs) -> tuple[LLMUser, list[dict]]:
    """An LLMUser over an httpx MockTransport that records each request body and answers 'Hello.'."""
    bodies: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "Hello."}}]})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    return LLMUser("http://user-sim/v1", model="m", client=client, **kwargs), bodies


EXAMPLES = {"impatient": ["still waiting!!", "how long does this take"], "panicked": ["HELP, I WAS CHARGED TWICE"]}


def test_the_prompt_shows_the_examples_of_the_chosen_style_only():
    user, bodies = capture(style_examples=EXAMPLES, style="impatient")
    assert user.start(TASK) == "Hello."
    system = bodies[0]["messages"][0]["content"]
    assert "Here is how real users write when they are impatient:" in system
    assert '- "still waiting!!"' in system and '- "how long does this take"' in system
    assert "CHARGED TWICE" not in system
    assert system.startswith(user_system_prompt(TASK))


def test_a_persona_style_is_used_and_folding_keeps_the_block():
    task = TASK.model_copy(update={"user_scenario": TASK.user_scenario.model_copy(update={
        "persona": "A panicked customer."})})
    user, bodies = capture(style_examples=EXAMPLES, fold_system=True)
    user.start(task)
    assert "when they are panicked:" in bodies[0]["messages"][0]["content"]
    assert "CHARGED TWICE" in bodies[0]["messages"][0]["content"]


@pytest.mark.parametrize("kwargs", [{}, {"style_examples": EXAMPLES}, {"style": "impatient"},
                                    {"style_examples": EXAMPLES, "style": "repetitive"}])
def test_without_a_style_or_its_examples_the_prompt_is_unchanged(kwargs):
    user, bodies = capture(**kwargs)
    user.start(TASK)
    assert bodies[0]["messages"][0]["content"] == user_system_prompt(TASK)
    assert "real users" not in bodies[0]["messages"][0]["content"]


def test_an_unknown_style_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown style.*'grumpy'.*known: impatient"):
        LLMUser("http://x/v1", model="m", style="grumpy")
