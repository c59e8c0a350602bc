"""Release-area fixtures: a tiny base (models/tiny.py), LoRA adapters fitted by SFT to answer the demo task to
different degrees, a noise-degraded adapter, and the demo rule graders + a gold intent check as the score function.

Adapters (built once per session, ~1 min on 2 cores):
- ``weak``:    SFT on answers that are valid JSON but with the wrong key (``order`` instead of ``order_id``);
- ``strong``:  SFT on the gold answers (valid JSON, right schema);
- ``noisy``:   ``strong`` + Gaussian noise on the LoRA weights (a deliberately broken candidate).

``adapters``: four random (untrained) LoRA folders, for registry tests that only need distinct adapters.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHORT_SYSTEM = 'Answer {"intent", "order_id"} JSON.'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_prompts(n: int, seed: int):
    from demo import support_triage as dd

    rng = random.Random(seed)
    out = []
    for _ in range(n):  # a short system prompt keeps the tests fast on 2 cores
        messages, intent, oid = dd.make_prompt(rng)
        out.append(([{"role": "system", "content": SHORT_SYSTEM}, messages[-1]], intent, oid))
    return out  # (messages, intent, order_id)


def sft_lora(base_dir: Path, out_dir: Path, pairs: list[tuple[list[dict], str]], steps: int, seed: int = 0,
             lr: float = 3e-3, batch_size: int = 8) -> Path:
    """Fit a LoRA adapter (q,k,v,o r=8) on (prompt, answer) pairs; loss on answer tokens (+ EOS) only."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"]))
    data = []
    for prompt, answer in pairs:
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        p = tok(text, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        data.append((p, a))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(data, min(batch_size, len(data)))
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (p, a) in enumerate(batch):
            s = p + a
            ids[j, :len(s)], attn[j, :len(s)] = torch.tensor(s), 1
            labels[j, len(p):len(s)] = torch.tensor(a)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir)
    return out_dir


def noisy_copy(src: Path, dst: Path, scale: float, seed: int = 0) -> Path:
    """Copy an adapter and add N(0, scale) noise to every LoRA weight (a degraded candidate)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w = load_file(dst / "adapter_model.safetensors")
    save_file({k: v + scale * torch.randn(v.shape, generator=g) for k, v in w.items()},
              dst / "adapter_model.safetensors")
    return dst


def demo_scorer():
    """Rule graders of the demo task (kinds 'rule') + gold intent (kind 'reward_model', tests only); total = mean."""
    from demo import support_triage as dd
    from flywheel.rewards import rules
    from flywheel.rewards.composite import ComponentSpec, Composite

    schema = {"type": "object", "required": ["intent", "order_id"],
              "properties": {"intent": {"enum": list(dd.INTENTS)},
                             "order_id": {"type": "string", "pattern": "^[0-9]{6}$"}}}

    def intent_ok(prompts, completions, **_):
        out = []
        for p, c in zip(prompts, completions):
            parsed = dd.parse_completion(c)
            out.append(float(parsed is not None and parsed["intent"] == dd.intent_of(dd.user_text(p))))
        return out

    graders = {"json_valid": rules.json_valid(), "schema": rules.json_schema(schema),
               "order_id": rules.extract_compare(r"(?<!\d)\d{6}(?!\d)"), "intent": intent_ok}
    kinds = {"json_valid": "rule", "schema": "rule", "order_id": "rule", "intent": "reward_model"}
    specs = [ComponentSpec(name=n, kind=k) for n, k in kinds.items()]
    return Composite(specs, graders).score, kinds


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models are overhead-bound; with other processes on 2 cores, 2 OpenMP threads thrash (5x slower here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{'base': dir, 'weak': adapter, 'strong': adapter, 'noisy': adapter, 'eval': [prompts]}."""
    with one_torch_thread():
        return _build_tiny(tmp_path_factory)


def _build_tiny(tmp_path_factory):
    from demo import support_triage as dd
    from models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    train = demo_prompts(400, seed=1)
    corpus = [m["content"] for p, _, _ in train for m in p] + [dd.gold_completion(i, o) for _, i, o in train]
    base = build_tiny_model(root / "base", corpus, vocab_size=512, hidden_size=128, num_layers=2, num_heads=2,
                            intermediate_size=256, max_position_embeddings=512, seed=0)
    gold = [(p, dd.gold_completion(i, o)) for p, i, o in train]
    weak = [(p, json.dumps({"intent": i, "order": o})) for p, i, o in train]
    out = {"base": base, "weak": sft_lora(base, root / "weak", weak, steps=150),
           "strong": sft_lora(base, root / "strong", gold, steps=250)}
    out["noisy"] = noisy_copy(out["strong"], root / "noisy", scale=0.5)
    out["eval"] = [p for p, _, _ in demo_prompts(48, seed=2)]
    return out


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Poll ``url`` until it answers 200; returns seconds waited. Fails early if ``proc`` died."""
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s")


def stop_pid(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts); stopped by its PID."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_pid(proc)


@pytest.fixture(scope="session")
def scorer():
    """(score_fn, kinds) of the demo task for evaluation tests."""
    return demo_scorer()


@pytest.fixture(scope="session")
def adapters(tmp_path_factory):
    """Four distinct random LoRA adapter folders on a tiny Llama (no training needed for registry tests)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    out = []
    for i in range(4):
        torch.manual_seed(i)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64))
        peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
        peft.save_pretrained(root / f"a{i}")
        out.append(root / f"a{i}")
    return out


def scores_record(scored_uri: str = "scored.parquet", snapshot_hash: str = "snap-sha", spec_hash: str = "spec-sha",
                  validation_report_uri: str = "validation/report.json"):
    """A judge-stage ``Scores`` record naming the snapshot, validation report and reward spec a candidate used."""
    from flywheel.records import Scores

    return Scores(snapshot_hash=snapshot_hash, validation_report_uri=validation_report_uri, scored_uri=scored_uri,
                  snapshot_uri="clean.parquet", rows=100, components=["json_valid", "schema"], spec_uri="spec.json",
                  spec_hash=spec_hash)


def candidate_record(adapter, base_model, scores, *, champion_version: int | None = None,
                     run_id: str | None = None):
    """A train-stage ``Candidate`` for ``adapter`` with the lineage the train stage builds from ``scores``."""
    from flywheel.records import Candidate, Lineage, version_tag

    lineage = Lineage(snapshot_hash=scores.snapshot_hash, validation_report=scores.validation_report_uri,
                      reward_spec_hash=scores.spec_hash, base_model=str(base_model),
                      parent_champion_version=version_tag(champion_version), train_run_id=run_id or "")
    return Candidate(scored_uri=scores.scored_uri, spec_hash=scores.spec_hash, lineage=lineage,
                     adapter_uri=str(adapter), value_uri=None, base_model=str(base_model), init_adapter=None,
                     champion_version=champion_version, run_id=run_id, steps=1, reward_start=0.0, reward_end=0.0,
                     kl_end=0.0, seconds=0.0, prompts=1, metrics_uri="metrics.jsonl")


@pytest.fixture
def make_scores():
    return scores_record


@pytest.fixture
def make_candidate():
    return candidate_record
