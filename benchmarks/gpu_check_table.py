"""The one table of ``benchmarks/gpu_check.sh``: rollout tokens/s (HF vs vLLM), the PPO run, and our default vs TRL's
RLOO / GRPO on the GPU, from the JSON files the check wrote.

    python benchmarks/gpu_check_table.py OUT_DIR VENV_S BENCH_S TOTAL_S
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(x: dict, key: str, fmt: str) -> str:
    return format(x[key], fmt) if x.get(key) is not None else "-"


def rollout_table(r: dict) -> None:
    print("| what | size | HF | vLLM | vLLM speed-up | adapter load ms | mean abs d log p | max abs d log p | "
          "HF GPU MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for x in r["rows"]:
        speedup = f"{x['vllm_over_hf']:.2f}x" if "vllm_over_hf" in x else "-"
        load_ms = f"{x['adapter_load_s'] * 1000:.0f}" if "adapter_load_s" in x else "-"
        print(f"| rollout tokens/s | {x['size']} ({x['params'] / 1e6:.0f}M) | {x['hf_tokens_per_s']:.0f} | "
              f"{cell(x, 'vllm_tokens_per_s', '.0f')} | {speedup} | {load_ms} | {cell(x, 'logprob_abs_diff', '.2e')} | "
              f"{cell(x, 'logprob_max_abs_diff', '.2e')} | {cell(x, 'gpu_peak_mb', '.0f')} |")
    p = r.get("ppo")
    if p:
        h, v = p["hf"], p.get("vllm", {})
        speedup = f"{h['s_per_update'] / v['s_per_update']:.2f}x" if v else "-"
        print(f"| PPO s/update ({p['steps']} updates) | {p['size']} | {h['s_per_update']:.2f} | "
              f"{cell(v, 's_per_update', '.2f')} | {speedup} | - | {cell(v, 'logprob_abs_diff', '.2e')} | - | "
              f"{cell(h, 'gpu_peak_mb', '.0f')} |")
        print(f"| PPO generate s/update | {p['size']} | {h['generate_s']:.2f} | {cell(v, 'generate_s', '.2f')} | - | "
              f"- | - | - | - |")


def peers_table(q: dict) -> None:
    print(f"\nours vs TRL {q['trl_versions'].get('latest', '?')} on {q['device']} (float32; memory: {q['memory']})\n")
    print("| size | side | s/update | memory MB | time vs trl_rloo | memory vs trl_rloo | time vs trl_grpo | "
          "memory vs trl_grpo |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in q["rows"]:
        for side in row["sides"]:
            x = row[side]
            ratios = " | ".join(cell(row, f"{k}_ratio_{side}_vs_{peer}", ".2f")
                                for peer in ("trl_rloo", "trl_grpo") for k in ("time", "memory"))
            print(f"| {row['size']} | {side} | {x['s_per_update']:.3f} | {x[q['memory']]:.0f} | {ratios} |")


def main() -> None:
    out, venv_s, bench_s, total_s = Path(sys.argv[1]), *sys.argv[2:5]
    r = json.loads((out / "rollout.json").read_text())
    a = r["args"]
    print(f"\n{r['device']}: {a['prompts']} prompts x {a['samples']} samples, <= {a['new_tokens']} new tokens, "
          f"{a['dtype']}, LoRA r=8 q/k/v/o; venv {venv_s} s, benchmark {bench_s} s, total {total_s} s\n")
    rollout_table(r)
    if (out / "ppo_peers.json").exists():
        peers_table(json.loads((out / "ppo_peers.json").read_text()))


if __name__ == "__main__":
    main()
