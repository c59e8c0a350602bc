"""The critic-free sides of ``bench_ppo.py``: our ``train`` defaults (RLOO) vs the latest TRL's ``RLOOTrainer`` and
``GRPOTrainer`` (from PyPI, in ``.venv-trl-latest``, which this module creates on first use).

Matched on both sides, from ``models.config.PPOConfig``'s defaults: prompts per update × samples per prompt (TRL:
``per_device_train_batch_size`` = all completions of the update, ``num_generations`` = samples, one optimizer step
per generation batch), response length cap, temperature, top-p, ``top_k`` 0, the KL coefficient against the LoRA-less
base (TRL: ``beta``; its GRPO default is 0, no reference pass, set to ours here), one iteration per batch, LoRA r /
alpha / target modules (dropout 0), the learning rate our default resolves to, float32 (TRL's ``bf16`` default off),
no vLLM, the same Python reward function and torch threads. Left at TRL's own defaults: ``gradient_checkpointing``
(on; the ``_nogc`` sides turn it off), loss aggregation and reward scaling (no cost difference).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_LATEST_VENV = ROOT / ".venv-trl-latest"

# one update's work of each side in forward-equivalents over the batch, besides generation (a LoRA backward ≈ one
# forward: input gradients only; a gradient-checkpointed backward recomputes the forward once more)
CRITIC_FREE_FWD = {"ours_rloo": 3, "ours_grpo": 3,  # reference fwd; policy fwd + bwd (old log-probs = detached fwd)
                   # + grad_accum 4 / 16: activations / 4 or / 16, one more no-grad fwd for the old log-probs
                   "ours_rloo_lean": 4, "ours_rloo_lean16": 4,
                   "ours_rloo_gc": 4,  # train.gradient_checkpointing: one more policy forward in the backward
                   "trl_rloo": 5, "trl_rloo_nogc": 4,  # old-logp fwd, reference fwd, policy fwd + bwd (+ recompute)
                   "trl_grpo": 4, "trl_grpo_nogc": 3}  # reference fwd, policy fwd + bwd (+ recompute)

OURS_DEFAULT = textwrap.dedent("""
    sys.path.insert(0, sys.argv[4])
    import tempfile
    from models.trainer import PPOConfig, PPOTrainer
    spec = json.loads(sys.argv[5])
    cfg = PPOConfig(steps=updates, checkpoint_every=10**6, progress=False, **spec["ours"])
    trainer = PPOTrainer(cfg, model_dir, chats, lambda p, c: reward(c), tempfile.mkdtemp(), dtype="float32",
                         device=spec["device"])
    times, lengths, gen = [], [], []
    for _ in range(updates):
        t = time.perf_counter()
        m = trainer.train_step()
        times.append(time.perf_counter() - t)
        lengths.append(m["charts/response_length"]); gen.append(m["charts/generate_time_s"])
    print("RESULT " + json.dumps({"times": times, "peak_mb": peak_mb(), "gpu_peak_mb": gpu_peak_mb(),
                                  "response_length": lengths, "generate_s": gen}))
""")

TRL_LATEST = textwrap.dedent("""
    import warnings; warnings.filterwarnings("ignore")
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    spec = json.loads(sys.argv[5])
    m = spec["match"]
    Config, Trainer = {"rloo": (trl.RLOOConfig, trl.RLOOTrainer),
                       "grpo": (trl.GRPOConfig, trl.GRPOTrainer)}[spec["kind"]]
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    def reward_func(prompts, completions, **kw):  # conversational: each completion is [{"role": "assistant", ...}]
        return reward([c if isinstance(c, str) else c[-1]["content"] for c in completions])
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = Config(output_dir="/tmp/trl-latest-bench-out", per_device_train_batch_size=m["batch"] * m["samples"],
                  gradient_accumulation_steps=1, num_generations=m["samples"],
                  max_completion_length=m["max_new_tokens"], temperature=m["temperature"], top_p=m["top_p"],
                  top_k=0, beta=m["kl_coef"], num_iterations=1,
                  learning_rate=m["learning_rate"], max_steps=updates, report_to="none",
                  use_cpu=spec["device"] == "cpu", bf16=False,
                  fp16=False, gradient_checkpointing=spec["gradient_checkpointing"], save_strategy="no",
                  logging_strategy="no", seed=0, disable_dropout=True, dataloader_num_workers=0)
    stamps, lengths = [time.perf_counter()], []
    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())
            lengths.extend(trainer._metrics["train"].get("completions/mean_length", [])[-1:])
    trainer = Trainer(model=policy, reward_funcs=[reward_func], args=args, train_dataset=Dataset.from_dict(
                      {"prompt": chats}), processing_class=tok, callbacks=[Clock()],
                      peft_config=LoraConfig(r=m["lora_r"], lora_alpha=m["lora_alpha"], lora_dropout=0.0,
                                             target_modules=m["lora_target_modules"], task_type="CAUSAL_LM"))
    stamps[0] = time.perf_counter()
    trainer.train()
    print("RESULT " + json.dumps({"times": [b - a for a, b in zip(stamps, stamps[1:])], "peak_mb": peak_mb(),
                                  "gpu_peak_mb": gpu_peak_mb(), "response_length": lengths,
                                  "trl": trl.__version__}))
""")


def matched_knobs(hidden_size: int) -> dict:
    """The knobs both sides share, read from ``PPOConfig``'s defaults (learning rate resolved for the base)."""
    from models.config import PPOConfig, default_learning_rate

    d = {f.name: getattr(PPOConfig(), f.name) for f in fields(PPOConfig)}
    return {"batch": d["batch_size"], "samples": d["samples_per_prompt"], "max_new_tokens": d["max_new_tokens"],
            "temperature": d["temperature"], "top_p": d["top_p"], "kl_coef": d["init_kl_coef"],
            "lora_r": d["lora_r"], "lora_alpha": d["lora_alpha"], "lora_target_modules": d["lora_target_modules"],
            "learning_rate": d["learning_rate"] or default_learning_rate(hidden_size), "advantage": d["advantage"]}


def side_spec(side: str, match: dict, device: str = "cpu") -> dict:
    """The JSON argument of one critic-free side's process (``device``: cpu or cuda, float32 either way)."""
    if side.startswith("ours_"):
        name = side.removeprefix("ours_").removesuffix("_gc")
        advantage, _, lean = name.partition("_lean")
        ours = ({"advantage": advantage} | ({"grad_accum": int(lean or 4)} if "_lean" in name else {})
                | ({"gradient_checkpointing": True} if side.endswith("_gc") else {}))
        return {"ours": ours, "match": match, "device": device}
    kind = side.removeprefix("trl_").removesuffix("_nogc")
    return {"kind": kind, "gradient_checkpointing": not side.endswith("_nogc"), "match": match, "device": device}


def is_critic_free(side: str) -> bool:
    return side in CRITIC_FREE_FWD


def script_of(side: str, common: str) -> str:
    return common + (OURS_DEFAULT if side.startswith("ours_") else TRL_LATEST)


def ensure_trl_latest_venv() -> Path:
    """Create ``.venv-trl-latest`` (torch==2.13.0 first, then the newest trl + peft + accelerate constrained to that
    torch, so pip does not pull a CUDA build) unless it already imports ``trl.GRPOTrainer``."""
    py = TRL_LATEST_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "from trl import GRPOTrainer, RLOOTrainer"],
                                      capture_output=True).returncode == 0:
        return py
    print("creating .venv-trl-latest (torch==2.13.0 + the latest trl), a few minutes ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_LATEST_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["-U", "pip"], check=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("torch==2.13.0\n")
    subprocess.run(pip + ["-c", fh.name, "-U", "trl", "peft", "accelerate"], check=True)
    return py


def trl_version(py: Path) -> str:
    out = subprocess.run([str(py), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() or "?"
