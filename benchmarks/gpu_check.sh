#!/usr/bin/env bash
# The GPU check of `train.rollout_engine: vllm`, one prepared script for one GPU (under 10 minutes):
#   1. builds the GPU vLLM venv: `make vllm-env VLLM_FLAVOR=gpu VLLM_VENV=.venv-vllm-gpu` (its own folder, so the
#      CPU .venv-vllm stays; the `vllm` wheel brings CUDA torch + transformers, the Makefile adds peft). The pip
#      install needs the package index or a wheelhouse (PIP_FIND_LINKS / PIP_INDEX_URL); a built venv is reused;
#   2. runs benchmarks/bench_rollout.py under that venv's python (models/ needs only torch/transformers/peft, and the
#      pipeline's .venv has CPU torch): HF generate vs vLLM tokens/s and the log-prob mismatch at 150M and a 0.5B-class
#      Llama (Qwen2.5-0.5B's block shapes, random weights, built from a config), then a short PPO run (default recipe)
#      on the 0.5B model with each rollout engine;
#   3. prints one table (and writes $OUT_DIR/rollout.json, the logs beside it).
# Knobs (environment): GPU_VENV, VLLM_FLAVOR (cpu runs the same path on CPU: GPU_VENV=.venv-vllm VLLM_FLAVOR=cpu
# SIZES=tiny PPO_SIZE=tiny), SIZES, PPO_SIZE, PPO_STEPS, DTYPE, PROMPTS, SAMPLES, NEW_TOKENS, OUT_DIR, BENCH_TIMEOUT_S.
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_VENV=${GPU_VENV:-.venv-vllm-gpu}
VLLM_FLAVOR=${VLLM_FLAVOR:-gpu}
SIZES=${SIZES:-150m,0.5b}
PPO_SIZE=${PPO_SIZE:-0.5b}
PPO_STEPS=${PPO_STEPS:-4}
DTYPE=${DTYPE:-bfloat16}
PROMPTS=${PROMPTS:-16}
SAMPLES=${SAMPLES:-4}
NEW_TOKENS=${NEW_TOKENS:-128}
OUT_DIR=${OUT_DIR:-${OUT:-bench_out/gpu_check}}  # $OUT: the folder a device run brings back
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-420}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false

start=$(date +%s)
if [[ "$VLLM_FLAVOR" == gpu ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
fi

# 1. the venv (a no-op when its stamp is there)
t0=$(date +%s)
if ! make vllm-env VLLM_FLAVOR="$VLLM_FLAVOR" VLLM_VENV="$GPU_VENV" >"$OUT_DIR/venv.log" 2>&1; then
  tail -n 30 "$OUT_DIR/venv.log"
  echo "gpu_check: building $GPU_VENV failed (see $OUT_DIR/venv.log; offline? set PIP_FIND_LINKS to a wheelhouse)" >&2
  exit 1
fi
venv_s=$(( $(date +%s) - t0 ))
PY="$GPU_VENV/bin/python"
"$PY" - "$VLLM_FLAVOR" <<'EOF'
import sys
import torch, transformers, peft, vllm
gpu = torch.cuda.is_available()
print(f"venv: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, cuda {gpu}" + (f" ({torch.cuda.get_device_name()})" if gpu else ""))
if sys.argv[1] == "gpu" and not gpu:
    sys.exit("gpu_check: torch in the GPU venv sees no GPU")
EOF

# 2. the benchmark and the PPO run (the vLLM servers are its subprocesses, stopped when it ends)
t0=$(date +%s)
FLYWHEEL_VLLM_PYTHON="$PY" timeout --kill-after=30 "$BENCH_TIMEOUT_S" "$PY" benchmarks/bench_rollout.py \
  --sizes "$SIZES" --prompts "$PROMPTS" --samples "$SAMPLES" --new-tokens "$NEW_TOKENS" --dtype "$DTYPE" \
  --ppo-steps "$PPO_STEPS" --ppo-size "$PPO_SIZE" --vllm-python "$PY" --work "$OUT_DIR/work" \
  --json "$OUT_DIR/rollout.json" >"$OUT_DIR/bench.log" 2>&1 || {
  rc=$?
  tail -n 40 "$OUT_DIR/bench.log"
  for log in "$OUT_DIR"/work/*/vllm.log "$OUT_DIR"/work/*/vllm-rank0/vllm.log; do
    [[ -f "$log" ]] && { echo "--- $log"; tail -n 15 "$log"; }
  done
  echo "gpu_check: bench_rollout.py failed with code $rc" >&2
  exit "$rc"
}
bench_s=$(( $(date +%s) - t0 ))

# 3. one table
"$PY" - "$OUT_DIR/rollout.json" "$venv_s" "$bench_s" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
a = r["args"]
print(f"\n{r['device']}: {a['prompts']} prompts x {a['samples']} samples, <= {a['new_tokens']} new tokens, "
      f"{a['dtype']}, LoRA r=8 q/k/v/o; venv {sys.argv[2]} s, benchmark {sys.argv[3]} s, total {sys.argv[4]} s\n")
print("| what | size | HF | vLLM | vLLM speed-up | adapter load | mean abs d log p | max abs d log p |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for x in r["rows"]:
    print(f"| rollout tokens/s | {x['size']} ({x['params'] / 1e6:.0f}M) | {x['hf_tokens_per_s']:.0f} | "
          f"{x['vllm_tokens_per_s']:.0f} | {x['vllm_over_hf']:.2f}x | {x['adapter_load_s'] * 1000:.0f} ms | "
          f"{x['logprob_abs_diff']:.2e} | {x['logprob_max_abs_diff']:.2e} |")
p = r.get("ppo")
if p:
    h, v = p["hf"], p["vllm"]
    print(f"| PPO s/update ({p['steps']} updates) | {p['size']} | {h['s_per_update']:.2f} | {v['s_per_update']:.2f} | "
          f"{h['s_per_update'] / v['s_per_update']:.2f}x | - | {v['logprob_abs_diff']:.2e} | - |")
    print(f"| PPO generate s/update | {p['size']} | {h['generate_s']:.2f} | {v['generate_s']:.2f} | "
          f"{h['generate_s'] / v['generate_s']:.2f}x | - | - | - |")
EOF
