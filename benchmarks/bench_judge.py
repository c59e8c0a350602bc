"""Judge and reward-model throughput.

1. LLM judge against the local OpenAI-compatible replay endpoint with a fixed latency per call (default 50 ms):
   sequential (concurrency 1) vs concurrency 16 (goal >= 10x), then a cached rerun (goal: 0 calls);
2. reward model on the demo logs (tiny base + LoRA + score head): training time, held-out AUC, scoring rows/s.

    .venv/bin/python benchmarks/bench_judge.py [--rows 64] [--latency-ms 50] [--rm-rows 1600] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_endpoint(latency_s: float):
    """The replay endpoint in its own process (as a real endpoint would be): (process, base_url)."""
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.rewards.replay_server", "--latency-ms",
                             str(latency_s * 1000)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, proc.stdout.readline().strip()


def endpoint_calls(base_url: str) -> int:
    import httpx
    return httpx.get(f"{base_url}/stats").json()["calls"]


def bench_judge(rows: int, latency_s: float, tmp: Path) -> dict:
    import random

    from demo.support_triage import gold_completion, make_prompt
    from flywheel.rewards.judge import JudgeClient, VerdictCache, load_rubric

    rng = random.Random(0)
    items = [make_prompt(rng) for _ in range(rows)]
    prompts = [p for p, _, _ in items]
    answers = [gold_completion(i, o) for _, i, o in items]
    rubric = load_rubric("helpfulness")
    out = {}
    proc, url = start_endpoint(latency_s)
    try:  # warm-up off the clock: imports, the TLS context and the server's first request are paid once per process
        JudgeClient(url, "judge", concurrency=1).judge(rubric, prompts[:1], ["warm-up " + answers[0]])
        for conc in (1, 16):
            client = JudgeClient(url, "judge", concurrency=conc, cache=VerdictCache(tmp / f"cache-{conc}.sqlite"))
            before = endpoint_calls(url)
            t0 = time.perf_counter()
            verdicts = client.judge(rubric, prompts, answers)
            dt = time.perf_counter() - t0
            assert all(v.score is not None for v in verdicts)
            out[f"concurrency_{conc}"] = {"seconds": round(dt, 3), "verdicts_per_s": round(rows / dt, 1),
                                          "calls": endpoint_calls(url) - before}
        client = JudgeClient(url, "judge", concurrency=16, cache=VerdictCache(tmp / "cache-16.sqlite"))
        before = endpoint_calls(url)
        t0 = time.perf_counter()
        client.judge(rubric, prompts, answers)
        out["cached_rerun"] = {"seconds": round(time.perf_counter() - t0, 3), "calls": endpoint_calls(url) - before}
    finally:
        proc.terminate()
        proc.wait(10)
    out["speedup_16_vs_1"] = round(out["concurrency_1"]["seconds"] / out["concurrency_16"]["seconds"], 2)
    out["load_average_1m"] = round(os.getloadavg()[0], 2)  # other jobs on the machine share its cores
    return out


def bench_reward_model(rm_rows: int, tmp: Path, epochs: int, hidden: int, layers: int, max_length: int) -> dict:
    import torch

    from demo.support_triage import generate_logs, load_gold
    from flywheel.rewards.calibration import auc
    from flywheel.rewards.kpi import binary_label
    from flywheel.rewards.reward_training import preference_pairs, split_groups
    from models.reward_model import (
        RewardModelScorer,
        RewardModelTrainConfig,
        format_input,
        raw_scores,
        save_reward_model,
        train_reward_model,
    )
    from models.tiny import build_tiny_model

    torch.manual_seed(0)
    logs = tmp / "logs"
    generate_logs(logs, days=2, rows_per_day=rm_rows // 2, seed=0, defect_rate=0.0, fmt="jsonl",
                  start_date="2026-11-20")
    rows = [json.loads(line) for f in sorted(logs.glob("dt=*/*.jsonl")) for line in f.read_text().splitlines()]
    gold = {g["request_id"]: g["logged_correct"] for g in load_gold(logs)}
    texts_corpus = [m["content"] for r in rows for m in r["messages"]] + [r["completion"] for r in rows]
    t0 = time.perf_counter()
    base = build_tiny_model(tmp / "base", texts_corpus, hidden_size=hidden, num_layers=layers,
                            intermediate_size=hidden * 8 // 3)
    build_s = time.perf_counter() - t0
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base)
    labels = [binary_label(r["feedback"], ["resolved", "thumbs"]) for r in rows]
    groups = [json.dumps(r["messages"]) for r in rows]
    texts = [format_input(tok, r["messages"], r["completion"]) for r in rows]
    train, test = split_groups(groups, 0.2, 0)
    local = {g: k for k, g in enumerate(train)}
    pairs = [(local[a], local[b]) for a, b in preference_pairs(labels, groups, train)]
    cfg = RewardModelTrainConfig(epochs=epochs, max_length=max_length)
    t0 = time.perf_counter()
    res = train_reward_model(str(base), [texts[i] for i in train], [labels[i] for i in train], pairs, cfg)
    train_s = time.perf_counter() - t0
    scores = raw_scores(res.model, res.tokenizer, [texts[i] for i in test], cfg.max_length)
    folder = save_reward_model(res, tmp / "rm", str(base), cfg.max_length)
    scorer = RewardModelScorer(folder)
    t0 = time.perf_counter()
    scorer([rows[i]["messages"] for i in test], [rows[i]["completion"] for i in test])
    score_s = time.perf_counter() - t0
    return {"base": f"tiny llama hidden {hidden}, {layers} layers", "max_length": max_length,
            "rows_train": len(train), "rows_heldout": len(test), "epochs": epochs, "base_build_s": round(build_s, 2),
            "train_s": round(train_s, 2), "train_rows_per_s": round(len(train) * epochs / train_s, 1),
            "heldout_auc_vs_resolved": auc(scores, [labels[i] for i in test]),
            "heldout_auc_vs_gold": auc(scores, [int(gold[rows[i]["request_id"]]) for i in test]),
            "score_rows_per_s": round(len(test) / score_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64, help="verdicts per judge run")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="endpoint latency per call")
    ap.add_argument("--rm-rows", type=int, default=1600, help="demo log rows for the reward model (0 = skip)")
    ap.add_argument("--rm-epochs", type=int, default=6)
    ap.add_argument("--rm-hidden", type=int, default=96, help="tiny base width")
    ap.add_argument("--rm-layers", type=int, default=2, help="tiny base depth")
    ap.add_argument("--rm-max-length", type=int, default=64, help="tokens kept (the end: user message + answer)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        figures = {"judge": bench_judge(args.rows, args.latency_ms / 1000, tmp), "latency_ms": args.latency_ms}
        if args.rm_rows:
            figures["reward_model"] = bench_reward_model(args.rm_rows, tmp, args.rm_epochs, args.rm_hidden,
                                                         args.rm_layers, args.rm_max_length)
    j = figures["judge"]
    print(f"\nLLM judge, {args.rows} verdicts, {args.latency_ms:g} ms per call (local replay endpoint)")
    print(f"{'run':<22}{'seconds':>10}{'verdicts/s':>12}{'calls':>8}")
    for name in ("concurrency_1", "concurrency_16", "cached_rerun"):
        r = j[name]
        print(f"{name:<22}{r['seconds']:>10.3f}{r.get('verdicts_per_s', float('nan')):>12.1f}{r['calls']:>8}")
    print(f"speed-up concurrency 16 vs 1: {j['speedup_16_vs_1']:.1f}x (goal >= 10x); cached rerun calls: "
          f"{j['cached_rerun']['calls']} (goal 0); load average {j['load_average_1m']} on {os.cpu_count()} cores")
    if "reward_model" in figures:
        r = figures["reward_model"]
        print(f"\nReward model ({r['base']} + LoRA + score head, max_length {r['max_length']}), "
              f"{r['rows_train']} train / {r['rows_heldout']} held-out rows, {r['epochs']} epochs")
        for k in ("train_s", "train_rows_per_s", "heldout_auc_vs_resolved", "heldout_auc_vs_gold", "score_rows_per_s"):
            print(f"  {k:<26}{r[k]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
