#!/usr/bin/env bash
# The GPU check of `train.rollout_engine: vllm`, one prepared script for one GPU (under 10 minutes):
#   1. builds the GPU vLLM venv: `make vllm-env VLLM_FLAVOR=gpu VLLM_VENV=.venv-vllm-gpu` (its own folder, so the
#      CPU .venv-vllm stays; the `vllm` wheel brings CUDA torch + transformers, the Makefile adds peft). The pip
#      install needs the package index or a wheelhouse (PIP_FIND_LINKS / PIP_INDEX_URL); a built venv is reused;
#   2. runs benchmarks/bench_rollout.py under that venv's python (models/ needs only torch/transformers/peft, and the
#      pipeline's .venv has CPU torch): HF generate vs vLLM tokens/s and the log-prob mismatch at 150M and a 0.5B-class
#      Llama (Qwen2.5-0.5B's block shapes, random weights, built from a config), then a short PPO run (default recipe)
#      on the 0.5B model with each rollout engine;
#   3. runs benchmarks/bench_ppo.py --device cuda: our default (RLOO) vs TRL's RLOOTrainer / GRPOTrainer at ~100M and
#      0.5B, time and peak CUDA memory per side (PEERS="" skips it);
#   4. prints one table (and writes $OUT_DIR/rollout.json and ppo_peers.json, the logs beside them).
# GPU_VENV=system: a GPU machine without a package index (vllm's wheel alone is ~230 MB): the machine's own python
# (PYTHON, default python3, with CUDA torch + transformers), HF engine only, and wheels from WHEELS (a folder of
# peft / accelerate / trl / datasets wheels, installed with --no-index into /tmp/gpu-check-site) when given.
# Knobs (environment): GPU_VENV, VLLM_FLAVOR (cpu runs the same path on CPU: GPU_VENV=.venv-vllm VLLM_FLAVOR=cpu
# SIZES=tiny PPO_SIZE=tiny PEERS=), SIZES, PPO_SIZE, PPO_STEPS, DTYPE, PROMPTS, SAMPLES, NEW_TOKENS, PEERS,
# PEER_SIZES, PEER_UPDATES, WHEELS, OUT_DIR, BENCH_TIMEOUT_S.
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
PEERS=${PEERS-ours_rloo,trl_rloo,trl_grpo}
PEER_SIZES=${PEER_SIZES:-100m,0.5b}
PEER_UPDATES=${PEER_UPDATES:-4}
ENGINES=hf,vllm
OUT_DIR=${OUT_DIR:-${OUT:-bench_out/gpu_check}}  # $OUT: the folder a device run brings back
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-420}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false

start=$(date +%s)
if [[ "$VLLM_FLAVOR" == gpu ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
fi

# 1. the venv (a no-op when its stamp is there), or the machine's own python
t0=$(date +%s)
if [[ "$GPU_VENV" == system ]]; then
  PY=${PYTHON:-python3}
  ENGINES=hf
  if [[ -n "${WHEELS:-}" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
      "$WHEELS"/*.whl >"$OUT_DIR/venv.log" 2>&1 || { tail -n 20 "$OUT_DIR/venv.log"; exit 1; }
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  fi
elif ! make vllm-env VLLM_FLAVOR="$VLLM_FLAVOR" VLLM_VENV="$GPU_VENV" >"$OUT_DIR/venv.log" 2>&1; then
  tail -n 30 "$OUT_DIR/venv.log"
  echo "gpu_check: building $GPU_VENV failed (see $OUT_DIR/venv.log; offline? set PIP_FIND_LINKS to a wheelhouse," \
       "or GPU_VENV=system for the HF engine alone)" >&2
  exit 1
else
  PY="$GPU_VENV/bin/python"
fi
venv_s=$(( $(date +%s) - t0 ))
"$PY" - "$VLLM_FLAVOR" "$ENGINES" <<'EOF'
import importlib, sys
import torch, transformers, peft
gpu = torch.cuda.is_available()
have = {m: getattr(importlib.import_module(m), "__version__", "?") for m in ("vllm", "trl", "accelerate")
        if importlib.util.find_spec(m)}
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, {have}, cuda {gpu}" + (f" ({torch.cuda.get_device_name()})" if gpu else ""))
if "vllm" in sys.argv[2] and "vllm" not in have:
    sys.exit("gpu_check: no vllm in this python")
if sys.argv[1] == "gpu" and not gpu:
    sys.exit("gpu_check: torch in the GPU venv sees no GPU")
EOF

# 2. the benchmark and the PPO run (the vLLM servers are its subprocesses, stopped when it ends)
t0=$(date +%s)
FLYWHEEL_VLLM_PYTHON="$PY" timeout --kill-after=30 "$BENCH_TIMEOUT_S" "$PY" benchmarks/bench_rollout.py \
  --sizes "$SIZES" --prompts "$PROMPTS" --samples "$SAMPLES" --new-tokens "$NEW_TOKENS" --dtype "$DTYPE" \
  --ppo-steps "$PPO_STEPS" --ppo-size "$PPO_SIZE" --vllm-python "$PY" --work "$OUT_DIR/work" --engines "$ENGINES" \
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

# 3. our default vs TRL RLOO / GRPO on the GPU (a failure here keeps the rollout figures)
if [[ -n "$PEERS" && "$VLLM_FLAVOR" == gpu ]]; then
  timeout --kill-after=30 "$BENCH_TIMEOUT_S" "$PY" benchmarks/bench_ppo.py --device cuda --sizes "$PEER_SIZES" \
    --sides "$PEERS" --updates "$PEER_UPDATES" --peer-python "$(command -v "$PY")" --work "$OUT_DIR/work-ppo" \
    --json "$OUT_DIR/ppo_peers.json" >"$OUT_DIR/ppo_peers.log" 2>&1 || {
    tail -n 40 "$OUT_DIR/ppo_peers.log"; echo "gpu_check: bench_ppo.py --device cuda failed" >&2; }
  grep -A20 "^ size |" "$OUT_DIR/ppo_peers.log" || true
fi

# 4. one table
"$PY" benchmarks/gpu_check_table.py "$OUT_DIR" "$venv_s" "$bench_s" "$(( $(date +%s) - start ))"
