"""How the cost of one PPO update (the ``train`` defaults: RLOO, 4 samples per prompt, T 0.7, LoRA r=8 on q/k/v/o)
grows with the response length and the batch, and where the time goes.

For each response length (default 32, 128, 512) and batch of prompts (default 8, 32; × 4 samples = 32, 128
sequences) one process builds the trainer, runs a warm-up update, then times ``--updates`` updates, split into:
generation (HF ``generate``, KV cache), the reference forward (no grad), the policy forward (with grad; its
detached output is also the rollout's old log-probs), backward (the loss terms + ``backward``), the optimizer step
(clip + AdamW), and the rest (reward, tokenising, advantages, metrics). Responses are forced to the full length
(``min_new_tokens``), so each row costs what a batch of length-R answers costs, whatever the untrained model would
emit. Peak RSS is per process. Timers wrap the trainer's methods in the benchmark process only (``models/``
is not changed).

    .venv/bin/python benchmarks/bench_ppo_scaling.py [--size tiny] [--lengths 32,128,512] [--batches 8,32]
        [--updates 1] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
PHASES = ("generate", "reference_fwd", "policy_fwd", "backward", "optimizer", "other")

SIDE = textwrap.dedent("""
    import functools, json, sys, time
    import torch
    sys.path.insert(0, sys.argv[1])
    from models.trainer import PPOConfig, PPOTrainer
    model_dir, prompts_file, R, batch, updates = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
    chats = json.loads(open(prompts_file).read())
    spent = {}
    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return wrapper
    def reward(prompts, completions):
        return [float(c.strip().startswith("{")) + 0.1 * min(len(c), 40) / 40 for c in completions]
    import tempfile
    cfg = PPOConfig(steps=updates + 1, batch_size=batch, max_new_tokens=R, max_prompt_len=512,
                    checkpoint_every=10**6, progress=False)
    trainer = PPOTrainer(cfg, model_dir, chats, reward, tempfile.mkdtemp(), dtype="float32", device="cpu")
    ac, lm = trainer.ac, trainer.ac.lm
    lm.generate = functools.partial(lm.generate, min_new_tokens=R)  # every answer R tokens long
    trainer.engine.generate = timed("generate", trainer.engine.generate)
    ac.reference_pass = timed("reference_fwd", ac.reference_pass)
    ac.forward = timed("policy_fwd", ac.forward)
    trainer._loss = timed("backward", trainer._loss)  # the loss terms (cheap) count with their backward
    torch.Tensor.backward = timed("backward", torch.Tensor.backward)
    trainer.optimizer.step = timed("optimizer", trainer.optimizer.step)
    clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = timed("optimizer", clip)
    rows = []
    for i in range(updates + 1):
        spent.clear()
        t = time.perf_counter()
        m = trainer.train_step()
        total = time.perf_counter() - t
        phases = dict(spent, other=total - sum(spent.values()))
        rows.append({"s": total, "phases": phases, "response_length": m["charts/response_length"],
                     "peak_rss_mb": m["charts/peak_rss_mb"], "sequences": cfg.rollout_size})
    print("RESULT " + json.dumps(rows))
""")


def run_one(model: Path, prompts: Path, length: int, batch: int, updates: int, work: Path) -> list[dict]:
    script = work / "scaling_side.py"
    script.write_text(SIDE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(script), str(ROOT), str(model), str(prompts), str(length), str(batch),
                           str(updates)], capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"response length {length}, batch {batch} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


def summarise(length: int, batch: int, runs: list[dict]) -> dict:
    timed = runs[1:] or runs
    s = sum(r["s"] for r in timed) / len(timed)
    phases = {p: sum(r["phases"].get(p, 0.0) for r in timed) / len(timed) for p in PHASES}
    seqs = runs[-1]["sequences"]
    return {"response_length": length, "prompts": batch, "sequences": seqs, "s_per_update": s, "phases_s": phases,
            "ms_per_response_token": 1000 * s / (seqs * length), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "mean_response_tokens": runs[-1]["response_length"], "runs": runs}


def print_table(rows: list[dict]) -> None:
    print(f"{'R':>4} | {'prompts×4':>9} | {'s/update':>8} | {'ms/token':>8} | "
          + " | ".join(f"{p:>13}" for p in PHASES) + f" | {'peak MB':>7}")
    for r in rows:
        s = r["s_per_update"]
        cells = " | ".join(f"{r['phases_s'][p]:6.2f} ({100 * r['phases_s'][p] / s:3.0f}%)" for p in PHASES)
        print(f"{r['response_length']:>4} | {r['prompts']:>9} | {s:8.2f} | {r['ms_per_response_token']:8.3f} | "
              f"{cells} | {r['peak_rss_mb']:7.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "100m"])
    ap.add_argument("--lengths", default="32,128,512", help="response lengths (comma list)")
    ap.add_argument("--batches", default="8,32", help="prompts per update (comma list; × 4 samples each)")
    ap.add_argument("--updates", type=int, default=1, help="timed updates per point (after one warm-up update)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import random

    from bench_ppo import build_models

    from demo import support_triage as dd

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_ppo_scaling_"))
    work.mkdir(parents=True, exist_ok=True)
    lengths, batches = [int(x) for x in args.lengths.split(",")], [int(x) for x in args.batches.split(",")]
    load = os.getloadavg()
    model = build_models(work, [args.size], max_positions=1024)[args.size]
    rng = random.Random(1)
    (work / "prompts.json").write_text(json.dumps([dd.make_prompt(rng)[0] for _ in range(max(batches) * 2)]))
    rows = []
    for batch in batches:
        for length in lengths:
            rows.append(summarise(length, batch, run_one(model, work / "prompts.json", length, batch, args.updates,
                                                         work)))
            r = rows[-1]
            print(f"R {length:>4}, {batch} prompts × 4: {r['s_per_update']:.2f} s/update, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print(f"\nmodel {args.size}, threads {os.environ.get('OMP_NUM_THREADS', 'all')}, load average at start "
          f"{load[0]:.2f} ({os.cpu_count()} cores); one update of the train defaults (rloo, T 0.7, LoRA r=8 q/k/v/o)")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "load_average": load[0],
                                         "threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
