"""The tiny offline base: renumbered chats, the template without a system turn, fitting on logged chats."""
import doctest
import json
import random
import re

import pytest

from demo.support_triage import gold_completion, make_prompt
from models import tiny
from models.tiny import build_tiny_model, renumber


def test_tiny_doctests():
    assert doctest.testmod(tiny).failed == 0


@pytest.mark.parametrize("seed", range(5))
def test_renumber_keeps_copied_numbers_copied_and_wrong_ones_wrong(seed):
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "No numbers here."},
                {"role": "user", "content": "Where is order 123456? My other order was 98765."}]
    right, wrong = '{"order_id": "123456"}', '{"order_id": "123457"}'
    new_messages, new_right = renumber(rng, messages, right)
    user = new_messages[1]["content"]
    first, second = re.findall(r"\d+", user)
    assert len(first) == 6 and len(second) == 5 and first != "123456" and second != "98765"
    assert new_right == f'{{"order_id": "{first}"}}'  # the copy is still a copy
    assert new_messages[0] == messages[0] and messages[1]["content"].startswith("Where is order 123456")  # no mutation
    new_messages, new_wrong = renumber(rng, messages, wrong)
    assert re.findall(r"\d+", new_wrong)[0] != re.findall(r"\d+", new_messages[1]["content"])[0]  # still wrong


def test_tiny_template_renders_no_system_turn_and_fit_lowers_the_answer_loss(tmp_path):
    rng = random.Random(0)
    chats = [(p, gold_completion(i, o)) for p, i, o in (make_prompt(rng) for _ in range(64))]
    corpus = [m["content"] for p, _ in chats for m in p] + [a for _, a in chats]
    out = build_tiny_model(tmp_path / "base", corpus, vocab_size=400, hidden_size=64, num_layers=2, num_heads=2,
                           intermediate_size=128, pretrain_chats=chats, pretrain_steps=40, pretrain_lr=3e-3,
                           pretrain_batch_size=8, seed=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template(chats[0][0], tokenize=False, add_generation_prompt=True)
    assert chats[0][0][0]["content"] not in text and chats[0][0][1]["content"] in text
    assert text.endswith("<|im_start|>assistant\n")
    fit = json.loads((out / "pretrain.json").read_text())
    assert fit["steps"] == 40 and fit["chats"] == 64
    assert fit["loss_last"] < 0.6 * fit["loss_first"]
    with pytest.raises(ValueError, match="chats: empty"):
        tiny.fit_chats(None, tok, [], steps=1)
