"""The four roles share one base: reference = adapter disabled, exported adapters reproduce the policy, memory."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel

from models.policy import ActorCritic, load_base
from models.rollout import HFRolloutEngine, encode_prompts
from models.sft import SFTConfig, train_sft


def _perturb(ac: ActorCritic, adapter: str, scale: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for name, p in ac.lm.named_parameters():
        if f".{adapter}." in name:
            p.data.add_(scale * torch.randn(p.shape, generator=g))


def test_reference_is_the_base_and_roles_are_independent(tiny_base, tiny_task):
    lm, tok = load_base(tiny_base)
    fresh, _ = load_base(tiny_base)
    ac = ActorCritic(lm)
    _perturb(ac, "policy")
    _perturb(ac, "value", seed=1)
    rollout = HFRolloutEngine(ac, tok).generate([p for p, _, _ in tiny_task[:6]], max_new_tokens=12)
    ids, mask, R = rollout.input_ids, rollout.attention_mask, rollout.response_ids.shape[1]
    ref = ac.ref_logprobs(ids, mask, R)
    from models.policy import position_ids_from_mask
    from models.ppo import logprobs_from_logits
    with torch.no_grad():
        logits = fresh(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    expect = logprobs_from_logits(logits[:, -R - 1:-1], ids[:, -R:])
    assert torch.equal(ref, expect)  # exactly the base: no second copy needed
    trainable = {n for n, p in ac.named_parameters() if p.requires_grad}
    assert any(".value." in n for n in trainable) and any(".policy." in n for n in trainable)  # role switches keep both
    with torch.no_grad():
        logprobs, entropy, values = ac(ids, mask, R)
    assert not torch.allclose(logprobs, ref)  # the policy adapter is in use
    assert values.shape == logprobs.shape == entropy.shape == (6, R) and values.abs().sum() == 0  # zero-init head
    _perturb(ac, "value", seed=2)
    with torch.no_grad():
        logprobs2, _, _ = ac(ids, mask, R)
    assert torch.equal(logprobs, logprobs2)  # the value adapter does not touch the policy
    # one base: every base weight is stored once
    base_ptrs = {p.data_ptr() for n, p in ac.lm.named_parameters() if "lora_" not in n}
    assert len(base_ptrs) == sum(1 for n, _ in fresh.named_parameters())


def test_critic_free_actor_has_no_value_role(tiny_base, tmp_path):
    """rloo / grpo: no value adapter, no head, no value pass; the policy is the same as with a critic."""
    lm, _ = load_base(tiny_base)
    torch.manual_seed(0)
    ac = ActorCritic(lm, with_value=False, value_layers=1)
    assert ac.value_head is None and ac.trunk_layer is None and "value" not in ac.lm.peft_config
    trainable = [n for n, p in ac.named_parameters() if p.requires_grad]
    assert trainable and all(".policy." in n for n in trainable)
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    _perturb(ac, "policy")
    logprobs, entropy, values = ac(ids, mask, 5)
    assert values is None and logprobs.shape == entropy.shape == (2, 5)
    logprobs.sum().backward()
    assert all(p.grad is not None for n, p in ac.named_parameters() if p.requires_grad)
    with pytest.raises(RuntimeError, match="no critic"):
        ac.save_value(tmp_path / "value")
    lm2, _ = load_base(tiny_base)
    torch.manual_seed(0)
    with_critic = ActorCritic(lm2)
    _perturb(with_critic, "policy")
    with torch.no_grad():
        assert torch.allclose(with_critic(ids, mask, 5)[0], logprobs.detach(), atol=1e-6)


def test_value_pass_from_the_reference_trunk_equals_the_full_value_pass(tiny_base):
    lm, _ = load_base(tiny_base)
    ac = ActorCritic(lm, value_layers=1)
    assert ac.trunk_layer == 1
    _perturb(ac, "policy")
    _perturb(ac, "value", seed=1)
    torch.nn.init.normal_(ac.value_head.weight, generator=torch.Generator().manual_seed(2))
    ids = torch.randint(5, 100, (3, 20), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    _, trunk = ac.reference_pass(ids, mask, 8)
    full = ac(ids, mask, 8)[2]
    short = ac(ids, mask, 8, trunk=trunk)[2]
    assert torch.allclose(full, short, atol=1e-6)
    short.sum().backward()
    assert all(p.grad is not None for n, p in ac.named_parameters() if ".value." in n)


def _policy_and_value_grads(ac: ActorCritic, ids, mask) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ac.zero_grad(set_to_none=True)
    logprobs, _, values = ac(ids, mask, 8)  # the roles are switched back before backward runs
    loss = -(logprobs * torch.linspace(-1, 1, 8)).mean() + values.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in ac.named_parameters() if p.requires_grad}


def test_checkpointed_layers_give_the_same_loss_and_gradients_under_every_role(tiny_base, tiny_task, tmp_path):
    examples = [(p, json.dumps({"intent": i, "order_id": o})) for p, i, o in tiny_task[:16]]
    sft = train_sft(SFTConfig(epochs=1, batch_size=16, progress=False), tiny_base, examples, tmp_path / "sft")
    ids = torch.randint(5, 100, (4, 20), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    runs = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        lm, _ = load_base(tiny_base)
        ac = ActorCritic(lm, init_adapter=sft.adapter_dir)  # init (frozen) + policy; init + value
        _perturb(ac, "policy")
        _perturb(ac, "value", seed=1)
        if checkpointed:
            ac.checkpoint_layers()
        runs.append(_policy_and_value_grads(ac, ids, mask))
        with torch.no_grad():  # no-grad passes are not checkpointed and still match
            runs[-1][1]["ref"] = ac.ref_logprobs(ids, mask, 8)
    (loss0, g0), (loss1, g1) = runs
    assert torch.allclose(loss0, loss1, atol=1e-6)
    assert g0.keys() == g1.keys() and any(".policy." in n for n in g0) and any(".value." in n for n in g0)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-4, atol=1e-6), name
    assert any(float(g.abs().max()) > 0 for n, g in g1.items() if ".policy." in n)


def test_exported_policy_adapter_reproduces_warm_start_plus_ppo_delta(tiny_base, tiny_task, tmp_path):
    examples = [(p, json.dumps({"intent": i, "order_id": o})) for p, i, o in tiny_task[:32]]
    sft = train_sft(SFTConfig(epochs=1, batch_size=16, progress=False), tiny_base, examples, tmp_path / "sft")
    lm, tok = load_base(tiny_base)
    ac = ActorCritic(lm, init_adapter=sft.adapter_dir)
    q, m = encode_prompts(tok, [p for p, _, _ in tiny_task[:4]])
    with torch.no_grad(), ac.role("policy"):
        before = ac.lm(input_ids=q, attention_mask=m).logits
    with torch.no_grad(), ac.role("reference"):
        ref = ac.lm(input_ids=q, attention_mask=m).logits
    assert torch.allclose(before, ref)  # the fresh policy LoRA starts at zero: policy == warm start == reference
    _perturb(ac, "policy", 0.2)
    with torch.no_grad(), ac.role("policy"):
        policy = ac.lm(input_ids=q, attention_mask=m).logits
    ac.save_policy(tmp_path / "export")
    base2, _ = load_base(tiny_base)
    exported = PeftModel.from_pretrained(base2, str(tmp_path / "export"))
    with torch.no_grad():
        again = exported(input_ids=q, attention_mask=m).logits
    assert not torch.allclose(policy, ref, atol=1e-3)
    # exact up to float32 round-off of the SVD re-factoring (logits ~10, so 1e-4 absolute; a dropped rank costs >1e-2)
    assert torch.allclose(again, policy, rtol=1e-5, atol=1e-4)


MAKE_MODEL = textwrap.dedent("""
    import sys, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from models.tiny import train_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                      intermediate_size=1536, pad_token_id=0, eos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(sys.argv[1])
    train_tokenizer(["hello world 123"], 300).save_pretrained(sys.argv[1])
""")

MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    import psutil
    from models.policy import ActorCritic, load_base
    torch.set_num_threads(1)
    start = psutil.Process().memory_info().rss
    lm, tok = load_base(sys.argv[1])
    base_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    ac = ActorCritic(lm)
    ac.save_value(sys.argv[2])  # a reward-model folder in the rewards stage's format
    open(sys.argv[2] + "/reward_model.json", "w").write(json.dumps({"base_model": sys.argv[1], "mean": 0, "std": 1}))
    ac.attach_reward_model(sys.argv[2])
    ids = torch.randint(3, 250, (1, 24)); mask = torch.ones_like(ids)
    ac.reward_scores(ids, mask)                             # role 4: reward
    ref = ac.ref_logprobs(ids, mask, 8)                     # role 2: reference
    logprobs, entropy, values = ac(ids, mask, 8)            # roles 1 and 3: policy and value, with gradients
    (logprobs.mean() + values.mean()).backward()
    opt = torch.optim.AdamW([p for p in ac.parameters() if p.requires_grad]); opt.step()
    # VmHWM = peak RSS of this process image (ru_maxrss would inherit pytest's peak across fork+exec)
    peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"base_bytes": base_bytes, "growth": peak - start}))
""")


@pytest.mark.slow
def test_peak_memory_holds_one_copy_of_the_base(tmp_path):
    """Peak RSS of all four roles + one optimizer step, minus the process before loading, vs the base's bytes."""
    pytest.importorskip("psutil")
    made = subprocess.run([sys.executable, "-c", MAKE_MODEL, str(tmp_path / "m")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "m"), str(tmp_path / "rm")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = figures["growth"] / figures["base_bytes"]
    print(f"peak memory growth for 4 roles + one update = {ratio:.2f} x the base weights")
    assert figures["base_bytes"] > 80e6
    assert ratio < 2.0, figures  # one copy of the base (+ adapters, activations, Adam); four models would need >= 4x
