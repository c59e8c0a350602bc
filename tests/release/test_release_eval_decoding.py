"""The decoder of the evaluate stage (``models.decoding``) against transformers' own ``generate``, on a tiny model."""
import pytest


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    """{'base': a tiny Llama + tokenizer, 'adapter': a random (non-zero) LoRA on it, 'prompts': chat prompts}."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("decoding")
    chats = [([{"role": "user", "content": f"where is order {i:06d}?"}],
              f'{{"intent": "track", "order_id": "{i:06d}"}}') for i in range(0, 999_999, 9973)]
    texts = [m["content"] for p, _ in chats for m in p] + [a for _, a in chats]
    # fitted for a few steps, so that the base answers something (a random one only emits special tokens)
    base = build_tiny_model(root / "base", texts, vocab_size=256, hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, pretrain_chats=chats, pretrain_steps=40, pretrain_lr=1e-2, seed=0)
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(root / "adapter")
    prompts = [[{"role": "user", "content": t}] for t in ("order 000001 is late", "where is order 123456?", "hi")]
    return {"base": base, "adapter": root / "adapter", "prompts": prompts}


def _transformers_greedy(base, adapter, prompts, max_new_tokens):
    """The reference: one left-padded batch through ``PeftModel.generate``, greedy."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [t.strip() for t in tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_greedy_decode_equals_transformers_generate_for_the_adapter_and_the_base(tiny_lora):
    from models.decoding import AdapterPolicies, decode

    base, adapter, prompts = tiny_lora["base"], tiny_lora["adapter"], tiny_lora["prompts"]
    policies = AdapterPolicies(base, {"candidate": adapter}, batch_size=len(prompts), max_new_tokens=12)
    want_adapter = _transformers_greedy(base, adapter, prompts, 12)
    want_base = _transformers_greedy(base, None, prompts, 12)
    assert all(want_base) and want_adapter != want_base  # both answer, and the random adapter changes the answers
    assert policies.generate("candidate", prompts) == want_adapter
    assert policies.generate("base", prompts) == want_base
    assert decode(base, adapter, prompts, max_new_tokens=12, batch_size=2) == want_adapter
    assert decode(base, None, prompts, max_new_tokens=12) == want_base
    with pytest.raises(KeyError, match="unknown role 'champion'"):
        policies.generate("champion", prompts)


def test_measure_gives_zero_kl_for_the_base_and_token_lengths(tiny_lora):
    from models.decoding import AdapterPolicies

    base, adapter, prompts = tiny_lora["base"], tiny_lora["adapter"], tiny_lora["prompts"]
    policies = AdapterPolicies(base, {"candidate": adapter}, batch_size=2, max_new_tokens=8)
    answers = ["order 000001", "123456", ""]
    on_base, on_adapter = policies.measure("base", prompts, answers), policies.measure("candidate", prompts, answers)
    assert on_base["kl"] == pytest.approx([0.0] * 3, abs=1e-5)
    assert all(k > 0 for k in on_adapter["kl"]) and all(e > 0 for e in on_adapter["entropy"])
    lengths = [len(policies.tok(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]  # + EOS
    assert on_base["length"] == on_adapter["length"] == lengths


def test_sampling_is_seeded(tiny_lora):
    from models.decoding import AdapterPolicies

    base, adapter, prompts = tiny_lora["base"], tiny_lora["adapter"], tiny_lora["prompts"]
    policies = AdapterPolicies(base, {"candidate": adapter}, batch_size=3, max_new_tokens=12, temperature=1.0, seed=3)
    assert policies.generate("candidate", prompts) == policies.generate("candidate", prompts)
