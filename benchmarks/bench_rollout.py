"""Rollout throughput: Hugging Face ``generate`` vs a vLLM server (``rollout_engine: vllm``), same policy, same prompts.

For each size, one policy (the base + a LoRA r=8 on q/k/v/o whose B factors are random, so the adapter changes the
outputs) samples the same batch (``--prompts`` chats x ``--samples`` each, up to ``--new-tokens`` tokens, T 0.7) with
each engine: one untimed warm-up call, then ``--calls`` timed calls. tokens/s counts the response tokens (up to and
including EOS) over the wall time of the calls; the vLLM arm's time includes what every PPO update pays, saving the
adapter and hot-loading it under a new name (``adapter_s``). The log-prob mismatch is vLLM's per-token log-probs of
its sampled tokens against the trainer's recomputation (mean and max |Δ log p| over the timed calls).

Sizes: ``tiny`` (the test model: width 64, 2 layers, pretrained a few seconds on triage chats), ``150m`` and
``0.5b`` (Llama from a config with random weights and the tiny tokenizer, saved locally; ``0.5b`` has
Qwen2.5-0.5B's layer shapes). ``--ppo-steps N`` also runs N PPO updates of the default recipe per engine on
``--ppo-size`` and reports seconds per update (mean after the first) and ``rollout/logprob_abs_diff``.

    .venv/bin/python benchmarks/bench_rollout.py [--sizes tiny,150m] [--json out.json]

Only ``models`` (torch/transformers/peft) is imported, so on a GPU it runs under the GPU vLLM venv's python (which has
CUDA torch) with ``FLYWHEEL_VLLM_PYTHON`` pointing at the same venv (``benchmarks/gpu_check.sh``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.policy import ActorCritic, load_base  # noqa: E402
from models.rollout import HFRolloutEngine  # noqa: E402
from models.vllm_engine import VLLMRolloutEngine  # noqa: E402

LLAMAS = {  # Llama shapes built from a config (random weights)
    "150m": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=3072),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864),  # Qwen2.5-0.5B's blocks
}
INTENTS = {"track_order": ["Where is my order {oid}?", "Has {oid} shipped yet?", "Track {oid} please."],
           "refund": ["I want a refund for {oid}.", "Money back for order {oid}, please."],
           "cancel_order": ["Cancel order {oid}.", "Please cancel {oid} right now."]}
SYSTEM = 'Answer with one line of JSON: {"intent": "<intent>", "order_id": "<6 digits>"}.'


def chats(n: int, seed: int = 0) -> list[tuple[list[dict], str]]:
    """(chat, gold answer) pairs of a support-triage task."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        intent, oid = rng.choice(sorted(INTENTS)), str(rng.randint(100000, 999999))
        text = rng.choice(INTENTS[intent]).format(oid=oid)
        out.append(([{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                    json.dumps({"intent": intent, "order_id": oid})))
    return out


def reward(prompts, completions) -> list[float]:
    """Valid JSON naming the asked-for order id scores 1, other JSON 0, anything else -1."""
    out = []
    for p, c in zip(prompts, completions):
        try:
            obj = json.loads(c)
        except ValueError:
            out.append(-1.0)
            continue
        out.append(float(isinstance(obj, dict) and str(obj.get("order_id", "")) in p[-1]["content"]))
    return out


def build_models(work: Path, sizes: list[str]) -> dict[str, Path]:
    """The tiny model (pretrained a few seconds) and the bigger Llamas sharing its tokenizer; reused if present."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from models.tiny import build_tiny_model

    tiny = work / "tiny"
    if not (tiny / "config.json").is_file():
        data = chats(200)
        corpus = [m["content"] for c, _ in data for m in c] + [a for _, a in data]
        build_tiny_model(tiny, corpus, vocab_size=400, hidden_size=64, num_layers=2, num_heads=2,
                         intermediate_size=128, pretrain_epochs=3, pretrain_lr=1e-2, pretrain_batch_size=16, seed=0)
    out = {"tiny": tiny}
    tok = AutoTokenizer.from_pretrained(tiny)
    for size in [s for s in sizes if s != "tiny"]:
        if size not in LLAMAS:
            raise SystemExit(f"--sizes: unknown size {size!r} (tiny, {', '.join(LLAMAS)})")
        path = work / size
        if not (path / "config.json").is_file():
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              bos_token_id=tok.bos_token_id, **LLAMAS[size])
            LlamaForCausalLM(cfg).save_pretrained(path)
            tok.save_pretrained(path)
        out[size] = path
    return out


def policy_of(path: Path, args) -> tuple[ActorCritic, object]:
    lm, tok = load_base(path, args.dtype, args.device)
    torch.manual_seed(0)
    ac = ActorCritic(lm, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], with_value=False)
    with torch.no_grad():  # a non-zero adapter: vLLM must apply it to match
        for name, p in ac.lm.named_parameters():
            if ".policy." in name and "lora_B" in name:
                p.normal_(0, 0.02)
    return ac, tok


def timed_calls(engine, batch: list, args, check=None) -> dict:
    """Warm-up call, then ``args.calls`` timed ones: response tokens per second (and what ``check`` returns)."""
    engine.generate(batch, args.new_tokens, args.temperature)
    tokens, seconds, checks = 0, 0.0, []
    for _ in range(args.calls):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rollout = engine.generate(batch, args.new_tokens, args.temperature)
        seconds += time.perf_counter() - t0
        tokens += int(rollout.response_mask.sum())
        if check is not None:
            checks.append(check(rollout))
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "checks": checks}


def measure(size: str, path: Path, args, work: Path) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ac, tok = policy_of(path, args)
    pairs = chats(args.prompts, seed=1)
    batch = [c for c, _ in pairs for _ in range(args.samples)]
    hf = timed_calls(HFRolloutEngine(ac, tok), batch, args)
    print(f"{size:>5} hf   {hf['tokens_per_s']:8.1f} tokens/s ({hf['tokens']} tokens)", flush=True)
    params = sum(p.numel() for p in ac.lm.parameters()) - sum(p.numel() for n, p in ac.lm.named_parameters()
                                                             if "lora_" in n)
    row = {"size": size, "params": params, "sequences": len(batch), "hf_tokens_per_s": hf["tokens_per_s"],
           "hf_tokens": hf["tokens"], "gpu_peak_mb": gpu_peak_mb()}
    if "vllm" not in args.engines:
        return row

    def mismatch(rollout) -> tuple[float, float]:
        R, mask = rollout.response_ids.shape[1], rollout.response_mask
        with torch.no_grad():
            lp, _, _ = ac(rollout.input_ids, rollout.attention_mask, R, args.temperature)
        gap = (lp.float() - rollout.logprobs.float()).abs() * mask
        return float(gap.sum()), float(gap.max())

    on_gpu = next(ac.parameters()).device.type == "cuda"
    t0 = time.perf_counter()
    engine = VLLMRolloutEngine(ac, tok, path, work / f"vllm-{size}", max_new_tokens=args.new_tokens,
                               python=args.vllm_python, dtype=args.dtype,
                               gpu_memory_utilization=args.gpu_memory_utilization if on_gpu else None,
                               extra_args=args.vllm_arg)
    startup = time.perf_counter() - t0
    try:
        vl = timed_calls(engine, batch, args, mismatch)
        adapter_s = engine.load_s
    finally:
        engine.close()
    diff = sum(c[0] for c in vl["checks"]) / vl["tokens"]
    print(f"{size:>5} vllm {vl['tokens_per_s']:8.1f} tokens/s ({vl['tokens']} tokens; adapter load "
          f"{adapter_s * 1000:.0f} ms/call; mean |d log p| {diff:.2e})", flush=True)
    return row | {"vllm_tokens_per_s": vl["tokens_per_s"], "vllm_over_hf": vl["tokens_per_s"] / hf["tokens_per_s"],
                  "vllm_tokens": vl["tokens"], "vllm_startup_s": startup, "adapter_load_s": adapter_s,
                  "logprob_abs_diff": diff, "logprob_max_abs_diff": max(c[1] for c in vl["checks"])}


def gpu_peak_mb() -> float | None:
    """Peak CUDA memory allocated by this process so far (None on CPU)."""
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def ppo_run(size: str, path: Path, args, work: Path) -> dict:
    """``--ppo-steps`` updates of the default recipe (RLOO) with each engine: s/update after the first."""
    from models.trainer import PPOConfig, PPOTrainer

    prompts = [c for c, _ in chats(64, seed=2)]
    row = {"size": size, "steps": args.ppo_steps}
    for engine in args.engines:
        cfg = PPOConfig(steps=args.ppo_steps, batch_size=args.prompts, samples_per_prompt=args.samples,
                        max_new_tokens=args.new_tokens, rollout_engine=engine, checkpoint_every=10**6,
                        progress=False, vllm_python=args.vllm_python,
                        vllm_gpu_memory_utilization=args.gpu_memory_utilization, vllm_extra_args=args.vllm_arg)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer = PPOTrainer(cfg, path, prompts, reward, work / f"ppo-{size}-{engine}", dtype=args.dtype,
                             device=args.device)
        setup = time.perf_counter() - t0
        try:
            hist = trainer.train(resume=False).history
        finally:
            trainer.close()
        tail = hist[1:] or hist
        row[engine] = {"setup_s": setup, "s_per_update": statistics.mean(m["charts/step_time_s"] for m in tail),
                       "generate_s": statistics.mean(m["charts/generate_time_s"] for m in tail),
                       "reward": [round(m["objective/scores"], 3) for m in hist], "gpu_peak_mb": gpu_peak_mb()}
        if engine == "vllm":
            row[engine]["logprob_abs_diff"] = statistics.mean(m["rollout/logprob_abs_diff"] for m in hist)
        print(f"{size:>5} ppo {engine:>4}: {row[engine]['s_per_update']:.3f} s/update (generate "
              f"{row[engine]['generate_s']:.3f} s), setup {setup:.0f} s", flush=True)
    return row


def print_table(rows: list[dict], ppo: dict | None) -> None:
    if rows and "vllm_tokens_per_s" not in rows[0]:
        print(f"\n{'size':>5} {'params':>8} {'seqs':>5} {'HF tok/s':>9} {'GPU peak MB':>11}  (vLLM not run)")
        for r in rows:
            gpu = f"{r['gpu_peak_mb']:11.0f}" if r["gpu_peak_mb"] else f"{'-':>11}"
            print(f"{r['size']:>5} {r['params'] / 1e6:7.1f}M {r['sequences']:>5} {r['hf_tokens_per_s']:9.0f} {gpu}")
        if ppo:
            print(f"PPO {ppo['size']} x {ppo['steps']} updates: hf {ppo['hf']['s_per_update']:.3f} s/update "
                  f"(generate {ppo['hf']['generate_s']:.3f} s), rewards {ppo['hf']['reward']}")
        return
    print(f"\n{'size':>5} {'params':>8} {'seqs':>5} {'HF tok/s':>9} {'vLLM tok/s':>10} {'vLLM/HF':>8} "
          f"{'adapter ms':>10} {'mean|dlogp|':>11} {'max|dlogp|':>10}")
    for r in rows:
        print(f"{r['size']:>5} {r['params'] / 1e6:7.1f}M {r['sequences']:>5} {r['hf_tokens_per_s']:9.0f} "
              f"{r['vllm_tokens_per_s']:10.0f} {r['vllm_over_hf']:8.2f} {r['adapter_load_s'] * 1000:10.0f} "
              f"{r['logprob_abs_diff']:11.2e} {r['logprob_max_abs_diff']:10.2e}")
    if ppo:
        v = ppo["vllm"]
        print(f"PPO {ppo['size']} x {ppo['steps']} updates: hf {ppo['hf']['s_per_update']:.3f} s/update, vllm "
              f"{v['s_per_update']:.3f} s/update (generate {ppo['hf']['generate_s']:.3f} vs {v['generate_s']:.3f} s)"
              f", rollout/logprob_abs_diff {v['logprob_abs_diff']:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,150m", help=f"comma list of tiny, {', '.join(LLAMAS)}")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (sequences = prompts x samples)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--calls", type=int, default=2, help="timed calls per engine (after one warm-up)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the HF side")
    ap.add_argument("--vllm-python", default=None, help="python of the vLLM venv (default: $FLYWHEEL_VLLM_PYTHON, "
                                                        "else .venv-vllm/bin/python)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--vllm-arg", action="append", default=[], help="one more server flag (repeatable), e.g. "
                                                                    "--vllm-arg=--enforce-eager")
    ap.add_argument("--engines", default="hf,vllm", help="hf,vllm (default) or hf alone (no vLLM venv, e.g. on a "
                                                         "GPU machine that cannot install vllm)")
    ap.add_argument("--ppo-steps", type=int, default=0, help="also time this many PPO updates per engine")
    ap.add_argument("--ppo-size", default="tiny")
    ap.add_argument("--work", type=Path, default=None, help="folder for the models (reused) and server logs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.engines = args.engines.split(",")
    if "hf" not in args.engines or set(args.engines) - {"hf", "vllm"}:
        ap.error("--engines: hf,vllm or hf")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = args.sizes.split(",")
    load = os.getloadavg()
    models = build_models(work, sizes + ([args.ppo_size] if args.ppo_steps else []))
    rows = [measure(size, models[size], args, work) for size in sizes]
    ppo = ppo_run(args.ppo_size, models[args.ppo_size], args, work) if args.ppo_steps else None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x {os.cpu_count()}"
    print(f"\n{device}; torch threads {torch.get_num_threads()}; load average at start {load[0]:.2f}; "
          f"{args.prompts} prompts x {args.samples} samples, <= {args.new_tokens} new tokens, T {args.temperature}, "
          f"{args.dtype}, LoRA r=8 q/k/v/o")
    print_table(rows, ppo)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "load_average": load[0],
                                         "threads": torch.get_num_threads(), "args": {
                                             k: str(v) for k, v in vars(args).items()}, "rows": rows, "ppo": ppo},
                                        indent=2))


if __name__ == "__main__":
    main()
