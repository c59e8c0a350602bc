"""Serving faults with a real vLLM (from .venv-vllm): adapters that fail to load, and the server killed mid-deploy.

One server for the module, started as `flywheel serve` starts it (``serve_champion``: the registry's champion v1 under
``champion`` and ``<model>-v1``). Each case promotes a new champion and runs the deploy stage
(``tasks.deploy.deploy_champion``) for real; the failing smoke test itself is ``tests/release/test_release_serving.py``.

- an adapter whose weights file is garbage, one whose rank is above the server's ``--max-lora-rank`` (vLLM refuses
  both), one trained on another base (other shapes: vLLM would load it, padding it into its buffers, and answer;
  the deploy stage refuses it before loading, ``adapter_misfits``), and one whose files in the artifact store changed
  after registration (refused on fetch) → ``rolled_back``, the registry's champion goes back to v1, the
  version is tagged ``deploy_status=rolled_back``, and a real request to ``champion`` is answered by v1's adapter (the
  same answers as before, not the base's);
- the server SIGKILLed while the new adapter is smoke-tested → ``failed`` ("stopped answering"), the registry rolled
  back to v1 and the version tagged ``failed``. The deploy stage does not restart vLLM: ``flywheel serve`` (or the
  orchestrator) does, and starts the registry's champion — v1 again, which the test checks by its answers.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

_spec = importlib.util.spec_from_file_location(
    "release_fixtures", Path(__file__).resolve().parents[1] / "release" / "conftest.py")
_release = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_release)
adapters = _release.adapters  # random LoRA folders on another tiny Llama (other shapes): "another base"

NAME = "support-bot"


def _lora(base: Path, out: Path, rank: int, seed: int) -> Path:
    """A random (not zero-initialised) LoRA adapter on ``base``: it changes the base's greedy answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, vllm_api_command, adapters):
    """The tiny base, adapters, a config, and a vLLM server serving the champion v1 (stopped at the end)."""
    from demo import support_triage as dd
    from flywheel import serving
    from flywheel.config import load_config
    from models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("serving_faults")
    prompts = [p for p, _, _ in _release.demo_prompts(3, seed=2)]
    train = _release.demo_prompts(200, seed=1)
    corpus = [m["content"] for p, _, _ in train for m in p] + [dd.gold_completion(i, o) for _, i, o in train]
    with _release.one_torch_thread():
        base = build_tiny_model(root / "base", corpus, vocab_size=512, hidden_size=128, num_layers=2, num_heads=2,
                                intermediate_size=256, max_position_embeddings=512, seed=0)
        loras = {"v1": _lora(base, root / "lora-v1", 8, seed=1), "good": _lora(base, root / "lora-good", 8, seed=2),
                 "rank16": _lora(base, root / "lora-rank16", 16, seed=3)}
    garbage = shutil.copytree(loras["good"], root / "lora-garbage")
    (garbage / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"not a safetensors file" * 64)
    loras["garbage"], loras["other_base"] = garbage, adapters[0]
    golden = root / "golden.jsonl"
    golden.write_text("".join(json.dumps({"messages": p}) + "\n" for p in prompts))
    cfg = load_config(None, overrides={
        "project.state_dir": str(root / "state"), "evaluate.golden_set": str(golden),
        "serve.port": _release.free_port(), "serve.command": vllm_api_command, "serve.max_lora_rank": 8,
        "serve.max_loras": 3, "serve.smoke_min_pass_rate": 1.0})
    registry = _register(cfg, loras["v1"], None, base)
    assert registry.version_of("champion") == 1
    info = serving.serve_champion(cfg)
    try:
        answers = {n: _answers(info.url, n, prompts) for n in ("champion", "base")}
        assert answers["champion"] != answers["base"]  # v1's adapter is told apart from the base by its answers
        yield {"cfg": cfg, "registry": registry, "base": base, "loras": loras, "prompts": prompts, "info": info,
               "answers": answers}
    finally:
        serving.stop_server(serving.read_server_info(cfg.state).pid)


def _register(cfg, adapter: Path, evaluated: int | None, base: Path):
    from flywheel.records import Lineage
    from flywheel.registry import Registry

    registry = Registry.from_config(cfg)
    rel = registry.release(adapter, passed=True, reason="test", evaluated_champion=evaluated,
                           lineage=Lineage(base_model=str(base)))
    assert rel.decision == "promoted", rel
    return registry


def _answers(url: str, model: str, prompts: list) -> list[str]:
    from flywheel import serving

    return [serving.chat(url, model, p, 24)[0] for p in prompts]


def _always(prompts, answers):
    return [1.0] * len(answers)


@pytest.mark.parametrize("kind", ["garbage", "rank16", "other_base"])
def test_an_adapter_that_fails_to_load_keeps_the_previous_champion_answering(kind, world):
    from flywheel import serving
    from tasks.deploy import deploy_champion

    cfg, registry, url = world["cfg"], world["registry"], world["info"].url
    _register(cfg, world["loras"][kind], 1, world["base"])
    version = registry.version_of("champion")
    result = deploy_champion.fn(cfg, None, check=_always)
    assert result.status == "rolled_back" and result.rolled_back_registry, result
    assert f"loading {NAME}-v{version} failed" in result.reason and "keeps the previous weights" in result.reason
    if kind == "other_base":  # caught by the deploy stage: vLLM itself loads it without a word
        assert "do not fit the served base" in result.reason and "q_proj.lora_A.weight [4, 32]" in result.reason
    assert serving.is_healthy(url)
    assert f"{NAME}-v{version}" not in serving.served_models(url)
    assert _answers(url, "champion", world["prompts"]) == world["answers"]["champion"]  # v1's adapter answers
    st = registry.state()
    assert st["aliases"]["champion"] == 1 and st["aliases"]["previous"] is None, st
    assert st["versions"][version]["deploy"] == "rolled_back" and st["versions"][1]["deploy"] == "deployed", st
    assert "failed" in registry.tags(version)["deploy_reason"]


def test_a_changed_adapter_in_the_artifact_store_is_never_loaded(world, tmp_path):
    """v_n's weights changed in the store after registration: deploy refuses before the server sees them."""
    from tasks.deploy import deploy_champion

    cfg, registry = world["cfg"], world["registry"]
    _register(cfg, world["loras"]["good"], 1, world["base"])
    version = registry.version_of("champion")
    stored = next((cfg.state / "mlartifacts").glob(f"**/{registry.champion().run_id}/artifacts/adapter/"
                                                   "adapter_model.safetensors"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    result = deploy_champion.fn(cfg, None, check=_always)
    assert result.status == "rolled_back" and f"fetching v{version} failed" in result.reason, result
    assert "adapter_model.safetensors" in result.reason and registry.version_of("champion") == 1
    assert _answers(world["info"].url, "champion", world["prompts"]) == world["answers"]["champion"]


def test_vllm_killed_during_the_smoke_test_is_reported_and_the_registry_keeps_the_previous(world, monkeypatch):
    """Last in the module: kills the server. SIGKILL of vLLM's group as the smoke test's first request goes out."""
    from openai.resources.chat.completions import Completions

    from flywheel import serving
    from tasks.deploy import deploy_champion

    cfg, registry, info = world["cfg"], world["registry"], world["info"]
    _register(cfg, world["loras"]["good"], 1, world["base"])
    version = registry.version_of("champion")
    original, killed = Completions.create, []

    def kill_then_create(self, *args, **kwargs):
        if not killed and kwargs.get("model") == f"{NAME}-v{version}":
            killed.append(info.pid)
            os.killpg(info.pid, signal.SIGKILL)
            os.waitpid(info.pid, 0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Completions, "create", kill_then_create)
    result = deploy_champion.fn(cfg, None, check=_always)
    monkeypatch.undo()
    assert killed and not serving.is_healthy(info.url)
    assert result.status == "failed" and result.rolled_back_registry, result
    assert "stopped answering: nothing is served" in result.reason and "the previous one again" in result.reason
    st = registry.state()
    assert st["aliases"]["champion"] == 1 and st["versions"][version]["deploy"] == "failed", st
    assert serving.read_server_info(cfg.state).champion_version == 1

    restarted = serving.serve_champion(cfg)  # what `flywheel serve` does: the registry's champion, v1 again
    assert restarted.champion_version == 1
    assert _answers(restarted.url, "champion", world["prompts"]) == world["answers"]["champion"]
