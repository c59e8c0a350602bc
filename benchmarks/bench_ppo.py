"""Our trainer vs TRL, side by side in one run, on the tiny model and a ~100M Llama: two comparisons.

Critic-free (the ``train`` defaults, side ``ours_rloo``) vs the latest TRL's ``RLOOTrainer`` / ``GRPOTrainer``
(``trl_rloo``, ``trl_grpo``; ``_nogc`` = TRL's gradient checkpointing off), in ``.venv-trl-latest``: 16 prompts × 4
samples, response 32, T 0.7, KL 0.05 against the LoRA-less base, LoRA r=8 on q/k/v/o (see ``bench_ppo_peers.py`` for
every matched knob). ``ours_rloo_lean`` / ``ours_rloo_lean16`` add ``grad_accum: 4`` / ``16``, ``ours_rloo_gc``
``gradient_checkpointing: true``.

GAE (side ``ours``) vs TRL 1.12.0's ``trl.experimental.ppo`` (``trl``; the last TRL with PPO), in ``.venv-trl``:
batch 8, response length 32, 1 PPO epoch, 1 minibatch, a value model on both sides (ours: ``advantage="gae"`` at
temperature 1.0), LoRA r=8 on q_proj/v_proj, the Python reward wrapped in an ``nn.Module`` for TRL, whose PPO wants
a reward *model*. ``--value-top`` adds ``ours_vtop`` (``value_layers`` = a quarter) and ``ours_lean`` (+ 4
micro-batches).

Float32, no vLLM, the same Python reward and torch threads everywhere. Each side runs in its own process (TRL in
throwaway venvs that this script creates on first use, torch==2.13.0 first), so peak RSS is per side. Prints seconds
per update (mean after the first), peak RSS, the ratios against each peer, and achieved FLOP/s as a fraction of a
float32 matmul peak measured in the same run.

    .venv/bin/python benchmarks/bench_ppo.py [--updates 4] [--sizes tiny,100m] [--sides ...] [--threads 1]
        [--json out.json]

FLOPs per update are counted analytically (2·params·tokens per forward; a LoRA backward ≈ 1 forward, a full-weight
backward ≈ 2 forwards, a checkpointed one recomputes the forward; generation = prefill + one token per step).
GAE, ours: generate, reference forward, policy+value forward and backward (the rollout's old log-probs/values are
the detached training forward). TRL PPO: generate, policy/reference/value forwards, then policy (LoRA) and value
(full model) forward+backward. Critic-free: ``bench_ppo_peers.CRITIC_FREE_FWD``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_ppo_peers as peers  # noqa: E402  (the critic-free sides: our defaults vs the latest TRL RLOO/GRPO)

TRL_VENV = ROOT / ".venv-trl"
SIZES = {"tiny": None, "100m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    num_key_value_heads=12, intermediate_size=2560),
         "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      intermediate_size=4864)}  # Qwen2.5-0.5B's blocks (random weights; for --device cuda)

COMMON = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    model_dir, prompts_file, updates = sys.argv[1], sys.argv[2], int(sys.argv[3])
    chats = json.loads(open(prompts_file).read())
    def reward(completions):
        # the same Python reward on both sides: valid-looking JSON gets more
        return [float(c.strip().startswith("{")) + 0.1 * min(len(c), 40) / 40 for c in completions]
    def peak_mb():
        # VmHWM (peak RSS of this process image); ru_maxrss would inherit the parent's peak across fork+exec
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    def gpu_peak_mb():
        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
""")

OURS = COMMON + textwrap.dedent("""
    sys.path.insert(0, sys.argv[4])
    from models.trainer import PPOConfig, PPOTrainer
    cfg = PPOConfig(steps=updates, batch_size=8, samples_per_prompt=1, max_new_tokens=32, ppo_epochs=1,
                    num_minibatches=1, advantage="gae", temperature=1.0, lora_r=8, lora_alpha=16,
                    lora_target_modules=["q_proj", "v_proj"],
                    missing_eos_penalty=None, checkpoint_every=10**6, progress=False, learning_rate=1e-4,
                    value_layers=int(sys.argv[5]) or None, grad_accum=int(sys.argv[6]))
    import tempfile
    trainer = PPOTrainer(cfg, model_dir, chats, lambda p, c: reward(c), tempfile.mkdtemp(), dtype="float32",
                         device="cpu")
    stamps, lengths = [time.perf_counter()], []
    def on_step_end(step, m):
        stamps.append(time.perf_counter()); lengths.append(m["charts/response_length"])
    trainer.train(resume=False, on_step_end=on_step_end)
    print("RESULT " + json.dumps({"times": [b - a for a, b in zip(stamps, stamps[1:])], "peak_mb": peak_mb(),
                                  "response_length": lengths}))
""")

TRL = COMMON + textwrap.dedent("""
    import warnings; warnings.filterwarnings("ignore")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    class Backbone(torch.nn.Module):
        def forward(self, input_ids, **kw):
            texts = tok.batch_decode(input_ids[:, context_length:], skip_special_tokens=True)
            r = torch.tensor(reward(texts), dtype=torch.float32)[:, None, None].expand(-1, input_ids.shape[1], 1)
            return type("Out", (), {"hidden_states": [r]})()
    class PythonReward(torch.nn.Module):  # TRL's PPO calls backbone + .score: wrap the Python reward
        base_model_prefix = "backbone"
        def __init__(self):
            super().__init__(); self.backbone = Backbone(); self.score = torch.nn.Identity()
    ids = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in ids]
    context_length = max(map(len, ids))
    ds = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    value.config.pad_token_id = tok.pad_token_id
    args = PPOConfig(output_dir=tempfile.mkdtemp() if False else "/tmp/trl-bench-out", per_device_train_batch_size=8,
                     gradient_accumulation_steps=1, num_ppo_epochs=1, num_mini_batches=1, response_length=32,
                     total_episodes=8 * updates, learning_rate=1e-4, report_to="none", use_cpu=True,
                     num_sample_generations=0, save_strategy="no", logging_strategy="no", seed=0,
                     local_rollout_forward_batch_size=8, kl_coef=0.05)
    stamps = [time.perf_counter()]
    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=PythonReward(),
                         train_dataset=ds, value_model=value, peft_config=LoraConfig(r=8, lora_alpha=16,
                         lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
                         callbacks=[Clock()])
    stamps[0] = time.perf_counter()
    trainer.train()
    print("RESULT " + json.dumps({"times": [b - a for a, b in zip(stamps, stamps[1:])], "peak_mb": peak_mb()}))
""").replace("import tempfile\n", "").replace("tempfile.mkdtemp() if False else ", "")


def ensure_trl_venv() -> Path:
    """Create ``.venv-trl`` (torch==2.13.0 first, then trl==1.12.0 constrained to it) unless it already works."""
    py = TRL_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import trl.experimental.ppo"],
                                      capture_output=True).returncode == 0:
        return py
    print("creating .venv-trl (torch==2.13.0 + trl==1.12.0), a few minutes ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["-U", "pip"], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("torch==2.13.0\n")
    subprocess.run(pip + ["-c", fh.name, "trl==1.12.0", "peft", "accelerate"], check=True)
    return py


def build_models(work: Path, sizes: list[str], max_positions: int = 512) -> dict[str, Path]:
    """The tiny demo Llama (tokenizer trained on demo chats) and, if asked, a ~100M Llama sharing its tokenizer."""
    import random

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from demo import support_triage as dd
    from models.tiny import build_tiny_model

    rng = random.Random(0)
    corpus = [m["content"] for _ in range(400) for m in dd.make_prompt(rng)[0]] + \
             [dd.gold_completion(i, str(rng.randint(100000, 999999))) for i in dd.INTENTS for _ in range(40)]
    out = {"tiny": build_tiny_model(work / "tiny", corpus, seed=0, max_position_embeddings=max_positions)}
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out["tiny"])
    for size in [s for s in sizes if s != "tiny"]:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=max_positions, tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                          **SIZES[size])
        LlamaForCausalLM(cfg).save_pretrained(work / size)
        tok.save_pretrained(work / size)
        out[size] = work / size
    return out


def model_facts(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    h, L, i, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    return {"matmul_params": L * (4 * h * h + 3 * h * i) + h * v, "layers": L, "hidden": h}


def flops_per_update(facts: dict, batch: int, prompt_len: float, resp: float, side: str,
                     value_share: float = 0.0) -> float:
    """Analytic FLOPs of one PPO update (see the module docstring)."""
    n, L, h = facts["matmul_params"], facts["layers"], facts["hidden"]
    seq = prompt_len + resp
    fwd = batch * seq * (2 * n + 4 * L * h * seq)  # one forward over the batch (matmuls + attention scores)
    gen = batch * prompt_len * 2 * n + batch * sum(2 * n + 4 * L * h * (prompt_len + t) for t in range(int(resp)))
    if peers.is_critic_free(side):
        return gen + fwd * peers.CRITIC_FREE_FWD[side]
    if side.startswith("ours"):  # reference fwd; policy fwd+bwd(LoRA); value fwd+bwd(LoRA) on value_share of layers
        return gen + fwd * (1 + 2 + 2 * (value_share or 1.0))
    return gen + fwd * (3 + 2 + 3)  # policy/ref/value fwd; policy fwd+bwd(LoRA); value fwd+bwd(full)


def matmul_peak(seconds: float = 3.0, device: str = "cpu") -> float:
    """Best float32 GEMM FLOP/s of this process (default threads) on n² × n² (n = 1024 on CPU, 8192 on a GPU)."""
    import torch

    n = 1024 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best


def run_side(python: Path, script: str, model: Path, prompts: Path, updates: int, work: Path,
             extra: list[str], device: str = "cpu") -> dict:
    path = work / f"side_{abs(hash(script)) % 10**8}.py"
    path.write_text(script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu":  # on a GPU machine the peers' packages may come from PYTHONPATH (carried wheels)
        env |= {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    proc = subprocess.run([str(python), str(path), str(model), str(prompts), str(updates), str(ROOT), *extra],
                          capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{python} {path} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


GAE_SIDES = ("ours", "ours_vtop", "ours_lean", "trl")
DEFAULT_SIDES = "ours,trl,ours_rloo,trl_rloo,trl_grpo"


def measure_side(side: str, size: str, model: Path, prompts: Path, prompt_len: float, updates: int, work: Path,
                 pythons: dict[str, Path], device: str = "cpu") -> dict:
    """Run one side in its own process; s/update (mean after the first update), peak RSS and FLOP/s."""
    facts = model_facts(model)
    if peers.is_critic_free(side):
        match = peers.matched_knobs(facts["hidden"])
        python = Path(sys.executable) if side.startswith("ours_") else pythons["latest"]
        r = run_side(python, peers.script_of(side, COMMON), model, prompts, updates, work,
                     [json.dumps(peers.side_spec(side, match, device))], device)
        flops = flops_per_update(facts, match["batch"] * match["samples"], prompt_len, match["max_new_tokens"], side)
    else:
        vl = max(1, facts["layers"] // 4) if side in ("ours_vtop", "ours_lean") else 0
        accum = 4 if side == "ours_lean" else 1
        python, script = (pythons["1.12"], TRL) if side == "trl" else (Path(sys.executable), OURS)
        r = run_side(python, script, model, prompts, updates, work, [str(vl), str(accum)])
        flops = flops_per_update(facts, 8, prompt_len, 32, side, vl / facts["layers"])
        if accum > 1:  # the rollout's old log-probs/values come from an extra no-grad forward
            flops += 8 * (prompt_len + 32) * (2 * facts["matmul_params"]) * (1 + vl / facts["layers"])
    timed = r["times"][1:] or r["times"]
    s = sum(timed) / len(timed)
    return {"s_per_update": s, "peak_rss_mb": r["peak_mb"], "gpu_peak_mb": r.get("gpu_peak_mb"),
            "flops_per_update": flops,
            "achieved_gflops": flops / s / 1e9, "times": r["times"], "response_length": r.get("response_length"),
            **({"generate_s": r["generate_s"]} if "generate_s" in r else {})}


def peers_of(side: str, present: list[str]) -> list[str]:
    """The TRL sides an "ours" side is compared with: TRL 1.12 PPO for GAE, the latest RLOO/GRPO otherwise."""
    if side.startswith("trl"):
        return []
    if peers.is_critic_free(side):
        return [p for p in present if p.startswith("trl_") and peers.is_critic_free(p)]
    return [p for p in present if p == "trl"]


def print_table(rows: list[dict], peak: float, mem: str = "peak_rss_mb") -> None:
    what = "GPU MB" if mem == "gpu_peak_mb" else "peak MB"
    print(f"{'size':>5} | {'side':>16} | {'s/update':>8} | {what:>7} | {'% of peak':>9} | ratios (time, memory)")
    for r in rows:
        for side in r["sides"]:
            v = r[side]
            ratios = "  ".join(f"vs {p}: {r[f'time_ratio_{side}_vs_{p}']:.2f}, {r[f'memory_ratio_{side}_vs_{p}']:.2f}"
                               for p in peers_of(side, r["sides"]))
            print(f"{r['size']:>5} | {side:>16} | {v['s_per_update']:8.3f} | {v[mem]:7.0f} | "
                  f"{100 * v['achieved_gflops'] * 1e9 / peak:9.1f} | {ratios}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=4, help="PPO updates per side and size (the first is not timed)")
    ap.add_argument("--sizes", default="tiny,100m")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--value-top", action="store_true",
                    help="also run ours (GAE) with the value adapter on the top quarter of the layers (value_layers)")
    ap.add_argument("--sides", default=None,
                    help=f"comma list of {','.join(GAE_SIDES)} (GAE vs TRL 1.12 PPO) and "
                         f"{','.join(peers.CRITIC_FREE_FWD)} (critic-free defaults vs the latest TRL); "
                         f"default: {DEFAULT_SIDES}")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per side (default: all cores; use 1 on a shared, loaded machine)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: critic-free sides only; memory = peak CUDA memory allocated per side")
    ap.add_argument("--peer-python", type=Path, default=None,
                    help="a python that imports trl (>= 1.16) for the TRL RLOO/GRPO sides, instead of creating "
                         ".venv-trl-latest (a GPU machine without a package index: carried wheels on PYTHONPATH)")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        import torch
        torch.set_num_threads(args.threads)
    sizes = args.sizes.split(",")
    wanted = (args.sides or DEFAULT_SIDES + (",ours_vtop,ours_lean" if args.value_top else "")).split(",")
    unknown = [s for s in wanted if s not in GAE_SIDES and not peers.is_critic_free(s)]
    if unknown:
        ap.error(f"--sides: unknown side(s) {', '.join(unknown)}")
    if args.device == "cuda" and any(s in GAE_SIDES for s in wanted):
        ap.error("--device cuda: the GAE sides (TRL 1.12 PPO) run on the CPU only; pick critic-free --sides")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_ppo_"))
    work.mkdir(parents=True, exist_ok=True)
    pythons = {"1.12": ensure_trl_venv() if "trl" in wanted else None,
               "latest": (args.peer_python or peers.ensure_trl_latest_venv())
               if any(s.startswith("trl_") for s in wanted) else None}
    versions = {k: peers.trl_version(v) for k, v in pythons.items() if v is not None}
    load = os.getloadavg()
    models = build_models(work, sizes)
    import random

    from transformers import AutoTokenizer

    from demo import support_triage as dd
    rng = random.Random(1)
    chats = [dd.make_prompt(rng)[0] for _ in range(64)]
    (work / "prompts.json").write_text(json.dumps(chats))
    tok = AutoTokenizer.from_pretrained(models["tiny"])
    prompt_len = sum(len(tok.apply_chat_template(c, tokenize=True, add_generation_prompt=True)["input_ids"])
                     for c in chats) / len(chats)
    peak = matmul_peak(device=args.device)
    mem = "gpu_peak_mb" if args.device == "cuda" else "peak_rss_mb"
    rows = []
    for size in sizes:
        row = {"size": size, "params_matmul": model_facts(models[size])["matmul_params"], "sides": wanted}
        for side in wanted:
            row[side] = v = measure_side(side, size, models[size], work / "prompts.json", prompt_len, args.updates,
                                         work, pythons, args.device)
            v["fraction_of_peak"] = v["achieved_gflops"] * 1e9 / peak
            print(f"{size:>5} {side:>16}: {v['s_per_update']:7.3f} s/update  peak {v[mem]:7.0f} MB  "
                  f"{v['achieved_gflops']:6.1f} GFLOP/s ({100 * v['fraction_of_peak']:4.1f} % of peak)", flush=True)
        for side in wanted:
            for p in peers_of(side, wanted):
                row[f"time_ratio_{side}_vs_{p}"] = row[side]["s_per_update"] / row[p]["s_per_update"]
                row[f"memory_ratio_{side}_vs_{p}"] = row[side][mem] / row[p][mem]
        rows.append(row)
    import torch
    match = peers.matched_knobs(192)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} thread(s)"
    print(f"\nfloat32 matmul peak {peak / 1e9:.1f} GFLOP/s on {where}; memory = {mem}; load average at "
          f"start {load[0]:.2f} ({os.cpu_count()} cores); mean prompt {prompt_len:.0f} tokens; TRL {versions}\n"
          f"GAE sides: batch 8, response 32, LoRA r=8 q/v; critic-free sides: {match['batch']} prompts x "
          f"{match['samples']} samples, response {match['max_new_tokens']}, T {match['temperature']}, LoRA r="
          f"{match['lora_r']} {'/'.join(match['lora_target_modules'])}")
    print_table(rows, peak, mem)
    if args.json:
        args.json.write_text(json.dumps({"matmul_peak_gflops": peak / 1e9, "load_average": load[0],
                                         "device": where, "memory": mem,
                                         "threads": torch.get_num_threads(), "trl_versions": versions,
                                         "prompt_tokens": prompt_len, "critic_free_knobs": match, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
