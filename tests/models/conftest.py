"""Fixtures of the learning-core tests: a tiny triage task and a tiny base model pretrained on its texts."""
import json
import os
import random
import re

import pytest

INTENT_WORDS = {
    "track_order": ["Where is my order {oid}?", "Track order {oid} please.", "Has {oid} shipped?"],
    "refund": ["I want a refund for {oid}.", "Refund order {oid}.", "Money back for {oid} please."],
    "cancel_order": ["Cancel order {oid}.", "Please cancel {oid}.", "I need to cancel {oid} now."],
}
SYSTEM = 'Answer with one line of JSON: {"intent": "<intent>", "order_id": "<6 digits>"}.'
KEYWORDS = {"track_order": r"where|track|shipped", "refund": r"refund|money", "cancel_order": r"cancel"}


def make_prompt(rng: random.Random):
    intent = rng.choice(sorted(INTENT_WORDS))
    oid = str(rng.randint(100000, 999999))
    text = rng.choice(INTENT_WORDS[intent]).format(oid=oid)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}], intent, oid


def answer(intent: str, oid: str) -> str:
    return json.dumps({"intent": intent, "order_id": oid})


def intent_reward(prompts, completions):
    """+1 for valid JSON naming the intent the user asked for, 0 for valid JSON with another intent, -1 otherwise."""
    out = []
    for p, c in zip(prompts, completions):
        try:
            obj = json.loads(c)
            got = obj["intent"] if isinstance(obj, dict) else None
        except (ValueError, KeyError, TypeError):
            got = None
        if got is None:
            out.append(-1.0)
            continue
        user = p[-1]["content"].lower()
        want = next(i for i, rx in KEYWORDS.items() if re.search(rx, user))
        out.append(1.0 if got == want else 0.0)
    return out


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core runner, 2 spinning OpenMP threads per process are several times
    slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("FLYWHEEL_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


def refund_reward(prompts, completions):
    """A learnable rule: +1 for valid JSON whose intent is "refund", 0 for valid JSON, -1 otherwise.

    >>> refund_reward([[]] * 3, ['{"intent": "refund", "order_id": "1"}', '{"intent": "x"}', 'oops'])
    [1.0, 0.0, -1.0]
    """
    out = []
    for c in completions:
        try:
            obj = json.loads(c)
        except ValueError:
            obj = None
        out.append(-1.0 if not isinstance(obj, dict) else float(obj.get("intent") == "refund"))
    return out


@pytest.fixture(name="refund_reward")
def refund_reward_fixture():
    """``refund_reward`` for tests in other modules (importing ``conftest`` by name is ambiguous across folders)."""
    return refund_reward


@pytest.fixture(name="intent_reward", scope="session")
def intent_reward_fixture():
    return intent_reward


@pytest.fixture(scope="session")
def tiny_task():
    rng = random.Random(0)
    return [make_prompt(rng) for _ in range(200)]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_task):
    """A 2-layer Llama pretrained for a few epochs on the task's texts: it writes JSON answers with random intents."""
    from models.tiny import build_tiny_model

    rng = random.Random(1)
    corpus = [m["content"] for p, _, _ in tiny_task for m in p]
    # answers with a random intent: the base knows the format, not which intent to pick
    corpus += [answer(rng.choice(sorted(INTENT_WORDS)), oid) for _, _, oid in tiny_task]
    from transformers import PreTrainedTokenizerFast  # noqa: F401  (import cost outside the timing below)
    out = tmp_path_factory.mktemp("tiny") / "base"
    chats = []
    from models.tiny import train_tokenizer
    tok = train_tokenizer(corpus, 400)
    for (p, _, oid), _ in zip(tiny_task, range(200)):
        text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        chats.append(text + answer(rng.choice(sorted(INTENT_WORDS)), oid))
    build_tiny_model(out, corpus, vocab_size=400, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                     pretrain_epochs=15, pretrain_lr=1e-2, pretrain_batch_size=16, pretrain_texts=chats, seed=0)
    return out
