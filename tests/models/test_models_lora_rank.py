"""Nightly champions keep a bounded LoRA rank: ``compress_lora`` re-factors warm start + PPO delta exactly (when the
update fits) or optimally (Eckart–Young) otherwise."""
import json

import torch
from safetensors.torch import load_file

from models.policy import compress_lora, save_lora


def _factors(d_out, d_in, rank, true_rank, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(true_rank, d_in, generator=g)
    mix = torch.randn(rank, true_rank, generator=g)
    return mix @ a, torch.randn(d_out, rank, generator=g)  # (rank, d_in) of row rank true_rank, (d_out, rank)


def test_compression_is_exact_when_the_update_fits():
    a, b = _factors(48, 40, rank=24, true_rank=12, seed=1)
    a2, b2 = compress_lora(a, b, 16)
    assert a2.shape == (16, 40) and b2.shape == (48, 16)
    assert torch.allclose(b2 @ a2, b @ a, atol=1e-4)


def test_compression_is_the_best_rank_k_approximation():
    a, b = _factors(48, 40, rank=24, true_rank=24, seed=2)
    full = (b @ a).double()
    a2, b2 = compress_lora(a, b, 16)
    err = torch.linalg.matrix_norm(full - (b2 @ a2).double())
    sv = torch.linalg.svdvals(full)
    assert torch.isclose(err, sv[16:].square().sum().sqrt(), rtol=1e-4)  # the discarded singular values, no more


def test_small_adapters_pass_through_untouched():
    a, b = _factors(8, 8, rank=4, true_rank=4, seed=3)
    a2, b2 = compress_lora(a, b, 16)
    assert a2 is a and b2 is b


def test_saved_adapter_rank_is_capped(tmp_path):
    from peft import LoraConfig

    def state(rank, seed):
        a, b = _factors(32, 32, rank=rank, true_rank=rank, seed=seed)
        key = "base_model.model.layers.0.q_proj"
        return {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}

    warm_cfg = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj"])
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"])
    save_lora(tmp_path / "capped", cfg, state(8, 5), (warm_cfg, state(16, 6)), max_rank=16)
    save_lora(tmp_path / "uncapped", cfg, state(8, 5), (warm_cfg, state(16, 6)))
    capped = json.loads((tmp_path / "capped" / "adapter_config.json").read_text())
    uncapped = json.loads((tmp_path / "uncapped" / "adapter_config.json").read_text())
    assert capped["r"] == 16 and uncapped["r"] == 24
    w = load_file(str(tmp_path / "capped" / "adapter_model.safetensors"))
    assert w["base_model.model.layers.0.q_proj.lora_A.weight"].shape == (16, 32)
