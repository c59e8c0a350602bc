"""Learning efficacy: does RL on the pipeline's own reward beat imitating production?

Same tiny base, same logs, time split (train on the older days, evaluate on held-out prompts of the newest day):

  (a) SFT on every logged completion             — imitates production, mistakes and all
  (b) RFT: SFT on the completions production marked good (resolved / thumbs up) — the day-0 champion
  (c) PPO from (b) with the pipeline's online reward: rule graders (valid JSON, order id copied) + a reward model
      trained on the logged feedback (noisy ``resolved`` / ``thumbs``). No gold label is used in training.

Measured on the held-out newest-day prompts against the generator's gold answers (accuracy %, 95 % Wilson CI) and
with the online reward. Goal: (c) >= (b) + 10 points.

    .venv/bin/python benchmarks/bench_efficacy.py [--rows-per-day 1500] [--ppo-steps 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flywheel import demo_data  # noqa: E402


def read_logs(folder: Path, days: list[str]) -> list[dict]:
    """Rows of the given partitions that parse and carry the fields training needs (the data plane does this for
    real, with a contract and quarantine; here only what the arms need). Duplicated request ids are kept once."""
    rows, seen = [], set()
    for day in days:
        for f in sorted((folder / f"dt={day}").glob("*.jsonl*")):
            raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
            for line in raw.splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if not (isinstance(r, dict) and isinstance(r.get("messages"), list) and isinstance(r.get("completion"), str)
                        and isinstance(r.get("feedback", {}), dict) and isinstance(r.get("request_id"), str)
                        and r["request_id"] not in seen):
                    continue
                if len(r["completion"]) > 2000 or any(not isinstance(m, dict) for m in r["messages"]):
                    continue
                seen.add(r["request_id"])
                r["day"] = day
                rows.append(r)
    return rows


def split(rows: list[dict], newest: str, fraction: float) -> tuple[list[dict], set[str]]:
    """Training rows = everything but the newest ``fraction`` of the newest day (by request id = time order)."""
    last = sorted(r["request_id"] for r in rows if r["day"] == newest)
    held = set(last[int(len(last) * (1 - fraction)):])
    return [r for r in rows if r["request_id"] not in held], held


def label(row: dict) -> float | None:
    fb = row.get("feedback") or {}
    if isinstance(fb.get("resolved"), bool):
        return float(fb["resolved"])
    if isinstance(fb.get("thumbs"), int) and fb["thumbs"] != 0:
        return float(fb["thumbs"] > 0)
    return None


def online_rules(prompts: list[list[dict]], completions: list[str]) -> list[float]:
    """The rule part of the demo's online reward: valid JSON answer + the customer's order id copied exactly."""
    from flywheel.rewards.rules import extract_compare, json_valid

    valid = json_valid()(prompts, completions)
    same_id = extract_compare(r"(?<!\d)\d{6}(?!\d)")(prompts, completions)
    return [v + s for v, s in zip(valid, same_id)]


def train_reward_model(base: Path, rows: list[dict], out: Path, epochs: int, seed: int) -> dict:
    """Reward model on the logged feedback (BCE on resolved / thumbs) through ``models/reward_model.py``."""
    from transformers import AutoTokenizer

    from models.reward_model import RewardModelTrainConfig, format_input, save_reward_model
    from models.reward_model import train_reward_model as fit

    tok = AutoTokenizer.from_pretrained(str(base))
    prompts = [[m for m in r["messages"]] for r in rows]
    texts = [format_input(tok, p, r["completion"]) for p, r in zip(prompts, rows)]
    labels = [label(r) for r in rows]
    cfg = RewardModelTrainConfig(epochs=epochs, objective="bce", seed=seed)
    t0 = time.perf_counter()
    result = fit(str(base), texts, labels, [], cfg)
    save_reward_model(result, out, str(base), cfg.max_length)
    return {"seconds": round(time.perf_counter() - t0, 1), "labelled": sum(x is not None for x in labels)}


def reward_of(scorer, prompts, completions) -> list[float]:
    rules = online_rules(prompts, completions)
    rm = scorer(prompts, completions)
    return [a + b for a, b in zip(rules, rm)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows-per-day", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-epochs", type=int, default=4)
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--rm-epochs", type=int, default=3)
    ap.add_argument("--ppo-steps", type=int, default=60)
    ap.add_argument("--ppo-lr", type=float, default=None)
    ap.add_argument("--ppo-kl", type=float, default=None)
    ap.add_argument("--ppo-batch", type=int, default=None)
    ap.add_argument("--ppo-samples", type=int, default=None)
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--label-noise", type=float, default=0.1)
    ap.add_argument("--work", type=Path, default=None, help="Keep intermediate models here (default: a temp dir).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from flows import gold as goldlib
    from flows import warm_start
    from models.reward_model import RewardModelScorer
    from models.trainer import PPOConfig, train_ppo

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_efficacy_"))
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    logs = demo_data.generate_logs(work / "logs", days=3, rows_per_day=args.rows_per_day, seed=args.seed,
                                   label_noise=args.label_noise)
    rows = read_logs(work / "logs", logs.days)
    train_rows, held = split(rows, logs.days[-1], 0.2)
    heldout = goldlib.heldout_gold(work / "logs", logs.days[-1], 0.2, args.eval_prompts)
    heldout = [g for g in heldout if g["request_id"] in held] or heldout
    print(f"logs: {len(rows)} usable rows, production accuracy {100 * logs.logged_accuracy:.1f} %, "
          f"train {len(train_rows)}, held-out eval {len(heldout)} (newest day {logs.days[-1]})")

    t = time.perf_counter()
    base = warm_start.build_base(work / "base", train_rows, pretrain_epochs=args.pretrain_epochs, seed=args.seed)
    timings["base_s"] = time.perf_counter() - t
    arms: dict[str, dict] = {}

    def evaluate(name: str, adapter: Path | None, seconds: float, scorer) -> None:
        acc = goldlib.gold_accuracy(base, adapter, heldout)
        answers = goldlib.generate(base, adapter, [g["messages"] for g in heldout])
        online = reward_of(scorer, [g["messages"] for g in heldout], answers)
        arms[name] = {"gold_accuracy": acc["accuracy"], "ci": acc["ci"], "per_intent": acc["per_intent"],
                      "online_reward": round(sum(online) / len(online), 3), "train_seconds": round(seconds, 1)}
        print(f"  {name:<28} gold {acc['accuracy']:5.1f} % [{acc['ci'][0]:.1f}, {acc['ci'][1]:.1f}]  "
              f"online reward {arms[name]['online_reward']:+.3f}  ({seconds:.0f} s)  {acc['per_intent']}")

    # reward model first (needed to score every arm with the online reward)
    t = time.perf_counter()
    rm_info = train_reward_model(base, train_rows, work / "reward_model", args.rm_epochs, args.seed)
    scorer = RewardModelScorer(work / "reward_model")
    timings["reward_model_s"] = time.perf_counter() - t
    print(f"reward model: {rm_info}")

    t = time.perf_counter()
    warm_start.train_warm_start(base, warm_start.all_examples(train_rows), work / "sft_all", epochs=args.sft_epochs,
                                seed=args.seed)
    evaluate("(a) SFT on all logs", work / "sft_all", time.perf_counter() - t, scorer)
    t = time.perf_counter()
    good = warm_start.good_examples(train_rows)
    warm_start.train_warm_start(base, good, work / "rft", epochs=args.sft_epochs, seed=args.seed)
    evaluate(f"(b) RFT ({len(good)} resolved)", work / "rft", time.perf_counter() - t, scorer)

    cfg = PPOConfig(seed=args.seed, steps=args.ppo_steps, progress=True, checkpoint_every=10_000)
    for key, val in (("learning_rate", args.ppo_lr), ("init_kl_coef", args.ppo_kl), ("batch_size", args.ppo_batch),
                     ("samples_per_prompt", args.ppo_samples)):
        if val is not None:
            setattr(cfg, key, val)
    prompts = [r["messages"] for r in train_rows]
    t = time.perf_counter()
    result = train_ppo(cfg, base, prompts, online_rules, work / "ppo", init_adapter=work / "rft",
                       reward_model_dir=work / "reward_model", resume=False, device="cpu")
    ppo_s = time.perf_counter() - t
    evaluate("(c) PPO from (b), online reward", Path(result.adapter_dir), ppo_s, scorer)
    curve = [round(h["objective/scores"], 3) for h in result.history]

    b, c = arms[next(k for k in arms if k.startswith("(b)"))], arms["(c) PPO from (b), online reward"]
    gain = round(c["gold_accuracy"] - b["gold_accuracy"], 2)
    out = {"arms": arms, "gain_c_minus_b": gain, "goal_met": gain >= 10.0, "reward_model": rm_info,
           "ppo": {"steps": cfg.steps, "lr": cfg.learning_rate, "init_kl_coef": cfg.init_kl_coef,
                   "batch_size": cfg.batch_size, "samples_per_prompt": cfg.samples_per_prompt,
                   "reward_start": result.reward_start, "reward_end": result.reward_end, "curve": curve},
           "logs": {"rows_per_day": args.rows_per_day, "production_accuracy": logs.logged_accuracy,
                    "accuracy_by_intent": logs.accuracy_by_intent, "label_noise": args.label_noise},
           "eval_prompts": len(heldout), "seconds": {k: round(v, 1) for k, v in timings.items()},
           "total_seconds": round(time.perf_counter() - t0, 1), "load": os.getloadavg()[0]}
    print(f"\n(c) - (b) = {gain:+.1f} points of gold accuracy (goal >= +10): {'met' if out['goal_met'] else 'NOT met'}; "
          f"total {out['total_seconds']:.0f} s, load {out['load']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
