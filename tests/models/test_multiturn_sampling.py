"""Sampling from token-id prefixes: a row's sample depends on its seed and prefix only, its log-probs are those a
full forward recomputes, EOS stops a row, greedy is argmax decoding, and the model's train/eval state survives."""
from types import SimpleNamespace

import pytest
import torch

from models.multiturn import sample_from_prefixes
from models.policy import load_base
from models.ppo import logprobs_from_logits

PREFIXES = [[5, 17, 42], [9, 3, 30, 31, 60, 7, 8, 11, 2], [70, 71, 72, 73, 12]]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A random 1-layer Llama (no pretraining): sampling needs logits, not skill."""
    from models.tiny import build_tiny_model

    corpus = ["Where is my order 123456?", "Refund order 654321 please.", "Cancel 111222 now."] * 5
    return build_tiny_model(tmp_path_factory.mktemp("multiturn") / "base", corpus, vocab_size=128,
                            hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)


def _load(folder):
    model, tokenizer = load_base(folder, device="cpu")
    with torch.no_grad():  # sharpen the near-uniform random logits (tied: both embeddings scale, logits by 16)
        model.get_output_embeddings().weight.mul_(4.0)
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return _load(tiny_folder)


def _full_forward_logprobs(model, prefix, sample, temperature):
    """log π(sample | prefix) from one forward of prefix + sample, without a cache."""
    ids = torch.tensor([prefix + sample])  # (1, P + R)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (1, P + R, V)
    return logprobs_from_logits(logits[:, len(prefix) - 1:-1], ids[:, len(prefix):], temperature)[0].tolist()


def test_a_rows_sample_depends_on_its_seed_not_on_its_batch(tiny):
    model, tok = tiny
    seeds = [11, 22, 33]
    together = sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=12, temperature=1.0, seeds=seeds)
    for prefix, seed, (ids, logps) in zip(PREFIXES, seeds, together):
        alone_ids, alone_logps = sample_from_prefixes(model, tok, [prefix], max_new_tokens=12, temperature=1.0,
                                                      seeds=[seed])[0]
        assert ids == alone_ids and logps == pytest.approx(alone_logps, abs=1e-5)
    reseeded = sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=12, temperature=1.0, seeds=[12, 22, 34])
    assert reseeded[1] == together[1] and (reseeded[0][0], reseeded[2][0]) != (together[0][0], together[2][0])
    same_prefix = sample_from_prefixes(model, tok, [PREFIXES[0]] * 2, max_new_tokens=12, temperature=1.0,
                                       seeds=[1, 2])
    assert same_prefix[0][0] != same_prefix[1][0]  # rows do not share one random stream


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_logprobs_equal_a_full_forward_recompute(tiny, temperature):
    model, tok = tiny
    out = sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=10, temperature=temperature, seeds=[1, 2, 3])
    for prefix, (ids, logps) in zip(PREFIXES, out):
        assert 0 < len(ids) == len(logps) <= 10 and all(isinstance(x, float) for x in logps)
        assert logps == pytest.approx(_full_forward_logprobs(model, prefix, ids, temperature), abs=1e-4)


def test_greedy_is_argmax_decoding(tiny):
    model, tok = tiny
    out = sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=8, temperature=0.0, seeds=[0, 0, 0])
    for prefix, (ids, logps) in zip(PREFIXES, out):
        expect = list(prefix)
        with torch.no_grad():
            for _ in range(8):  # plain argmax decoding: a full forward per token, no cache, no padding
                expect.append(int(model(input_ids=torch.tensor([expect])).logits[0, -1].argmax()))
        assert ids == expect[len(prefix):]
        assert logps == pytest.approx(_full_forward_logprobs(model, prefix, ids, 1.0), abs=1e-4)
    tight = sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=8, temperature=1.0, seeds=[5, 6, 7],
                                 top_p=1e-6)
    assert [ids for ids, _ in tight] == [ids for ids, _ in out]  # top-p that keeps one token is greedy


def test_eos_stops_a_row_and_the_others_go_on(tiny):
    model, tok = tiny
    greedy = [ids for ids, _ in sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=8, temperature=0.0,
                                                     seeds=[0, 0, 0])]
    eos = greedy[0][2]  # make row 0's third token the EOS
    stub = SimpleNamespace(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    out = sample_from_prefixes(model, stub, PREFIXES, max_new_tokens=8, temperature=0.0, seeds=[0, 0, 0])
    for full, (ids, logps) in zip(greedy, out):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert ids == full[:cut] and len(logps) == cut
    assert out[0][0][-1] == eos and len(out[0][0]) <= 3


def test_the_models_mode_is_restored_and_arguments_are_checked(tiny):
    model, tok = tiny
    model.train()
    try:
        sample_from_prefixes(model, tok, PREFIXES[:1], max_new_tokens=2, temperature=1.0, seeds=[0])
        assert model.training
    finally:
        model.eval()
    assert sample_from_prefixes(model, tok, PREFIXES[:2], max_new_tokens=0, temperature=1.0, seeds=[0, 1]) == [
        ([], []), ([], [])]
    with pytest.raises(ValueError, match="2 seeds for 3 prefixes"):
        sample_from_prefixes(model, tok, PREFIXES, max_new_tokens=2, temperature=1.0, seeds=[0, 1])
    with pytest.raises(ValueError, match="at least one token"):
        sample_from_prefixes(model, tok, [[]], max_new_tokens=2, temperature=1.0, seeds=[0])


def test_an_actor_critic_samples_through_its_policy_role(tiny_folder):
    """A fresh policy adapter (LoRA B = 0) is the base: the policy role samples exactly what the base does."""
    from models.policy import ActorCritic

    base, tok = _load(tiny_folder)
    expect = sample_from_prefixes(base, tok, PREFIXES, max_new_tokens=6, temperature=1.0, seeds=[4, 5, 6])
    ac = ActorCritic(base)
    with ac.role("policy"):
        got = sample_from_prefixes(ac.lm, tok, PREFIXES, max_new_tokens=6, temperature=1.0, seeds=[4, 5, 6])
    assert [ids for ids, _ in got] == [ids for ids, _ in expect]
    assert [x for _, lp in got for x in lp] == pytest.approx([x for _, lp in expect for x in lp], abs=1e-5)
