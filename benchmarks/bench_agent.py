"""Agent learning on the tiny model: held-out task success of the start policy, after rejection-sampled SFT, then RL.

The chain the agent flow runs, measured on Acme Shop with the scripted user (fixed seeds, CPU):

1. production agent transcripts (``demo.agent_logs``: a noisy production agent on the TRAIN tasks) fit the tiny
   base, as the triage logs fit the triage base: the start policy imitates production, mistakes included;
2. the start policy plays every TRAIN task ``--rollout-trials`` times; the episodes that passed every check are
   rejection-sampled into a synthetic dataset (``environments.synthetic``, with its card) and a LoRA is fitted on
   it (``tasks.agent_train.sft_agent``);
3. multi-turn RL from that adapter on the TRAIN tasks (``tasks.agent_train.train_agent_rl``: RLOO over the
   episodes of each task, tool results and user turns masked out of the loss);
4. each policy plays every held-out TEST task ``--eval-trials`` times (``tasks.agent_evaluate``): success rate
   with its 95 % Wilson interval, and pass^k.

    .venv/bin/python benchmarks/bench_agent.py [--json F] [--work DIR] [--rl-steps 30] ...
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--conversations-per-day", type=int, default=200)
    ap.add_argument("--error-rate", type=float, default=0.35, help="Share of production conversations with a mistake.")
    ap.add_argument("--fit-steps", type=int, default=400, help="Steps fitting the tiny base on the transcripts.")
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--rollout-trials", type=int, default=4, help="Start-policy episodes per train task (RFT pool).")
    ap.add_argument("--sft-epochs", type=int, default=3)
    ap.add_argument("--rl-steps", type=int, default=15)
    ap.add_argument("--rl-batch", type=int, default=8, help="Tasks per RL update.")
    ap.add_argument("--rl-samples", type=int, default=4, help="Episodes per task per update (the RLOO group).")
    ap.add_argument("--eval-trials", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="Keep models and episodes here (default: a temp dir).")
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def fit_base(args, rows: list[dict], out: Path) -> Path:
    """The pipeline's tiny base builder on the transcripts (one chat per model call, loss on the call's answer)."""
    from flywheel.base_model import build_base
    from flywheel.config import TinyBaseConfig

    tiny = TinyBaseConfig(hidden_size=args.width, max_positions=1024, fit_steps=args.fit_steps)
    return build_base(out, rows, tiny, seed=args.seed, progress=True)


def run(args, work: Path) -> dict:
    from demo.agent_logs import generate_agent_logs
    from environments.acme_shop import load_domain
    from models.config import PPOConfig
    from tasks.agent_evaluate import evaluate_agent
    from tasks.agent_train import rejection_sample, sft_agent, train_agent_rl
    from tasks.bootstrap import read_transcripts

    domain = load_domain()
    train, test = domain.split["train"], domain.split["test"]
    t0 = time.perf_counter()
    logs = generate_agent_logs(work / "logs", days=args.days, conversations_per_day=args.conversations_per_day,
                               seed=args.seed, error_rate=args.error_rate)
    rows = read_transcripts(work / "logs")
    print(f"production: {logs.conversations} conversations, {len(rows)} model calls, success {logs.success_rate:.3f}")
    base = fit_base(args, rows, work / "base")
    timings = {"fit_base_s": time.perf_counter() - t0}
    ev = dict(trials=args.eval_trials, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
              max_steps=args.max_steps, seed=args.seed + 1)
    arms = {"start": evaluate_agent(base, None, domain, test, work / "eval-start.jsonl", **ev)}
    print_arm("start", arms["start"])

    t = time.perf_counter()
    card = rejection_sample(base, None, domain, train, work / "synthetic", trials=args.rollout_trials, threshold=1.0,
                            temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                            max_steps=args.max_steps, seed=args.seed + 2)
    c = card["counts"]
    print(f"rejection sampling: kept {c['kept']} of {c['trajectories_in']} start-policy episodes "
          f"({c['tasks_kept']} of {c['tasks_in']} train tasks)")
    sft = sft_agent(base, work / "synthetic" / "dataset.jsonl", work / "sft", epochs=args.sft_epochs, seed=args.seed)
    timings["rft_s"] = time.perf_counter() - t
    arms["rft"] = evaluate_agent(base, sft.adapter_dir, domain, test, work / "eval-rft.jsonl", **ev)
    print_arm("rft", arms["rft"])

    t = time.perf_counter()
    config = PPOConfig(steps=args.rl_steps, batch_size=args.rl_batch, samples_per_prompt=args.rl_samples,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    rl = train_agent_rl(config, base, domain, train, work / "rl", init_adapter=sft.adapter_dir,
                        max_steps=args.max_steps)
    timings["rl_s"] = time.perf_counter() - t
    arms["rl"] = evaluate_agent(base, rl.adapter_dir, domain, test, work / "eval-rl.jsonl", **ev)
    print_arm("rl", arms["rl"])
    return {"args": {k: str(v) for k, v in vars(args).items()}, "production": logs.to_dict(),
            "synthetic_card": card, "rl_curve": [m["agent/success_rate"] for m in rl.history],
            "arms": {k: v.model_dump() for k, v in arms.items()}, "timings": timings,
            "seconds": time.perf_counter() - t0}


def print_arm(name: str, ev) -> None:
    lo, hi = ev.success_ci
    print(f"  {name:<6} held-out success {100 * ev.success_rate:5.1f} % [{lo:.1f}, {hi:.1f}] over {ev.episodes} "
          f"episodes, pass^1 {ev.pass_hat_k[1]:.3f}, pass^k {ev.pass_hat_k[max(ev.pass_hat_k)]:.3f}, "
          f"ends {ev.end_reasons}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp))
    print(f"total {result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
