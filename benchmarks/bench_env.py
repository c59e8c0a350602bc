"""Environment throughput: episodes per second of the trajectory collector with 1, 4 and 16 parallel environments.

Acme Shop, the deterministic ``ScriptedUser`` and the oracle policy (``environments.collect.ReferencePolicy``:
each task's reference actions as ``<tool_call>`` blocks, then a final message with its ``communicate_info``), so
every episode succeeds and the figures measure the environment and the collector, not a model. The policy share
is the share of the episodes' time spent in the policy call (the rest: ``reset`` and ``step``: database copy,
reference replay, tool calls, the simulated user and the reward).

    .venv/bin/python benchmarks/bench_env.py [--episodes 200] [--workers 1 4 16] [--json out.json]

``--episodes N`` runs ``trials = ceil(N / 45)`` trials of the first ``ceil(N / trials)`` tasks (exactly N when it
divides). The environment is pure Python plus in-memory SQLite, so the threads share the GIL: parallel
environments pay off once the policy waits on a model server, not with this instant oracle.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from environments.acme_shop import load_domain
from environments.collect import ReferencePolicy, collect


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=200, help="Episodes per worker count.")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16], help="Parallel environments to measure.")
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error(f"--episodes must be at least 1, got {args.episodes}")
    if min(args.workers) < 1:
        ap.error(f"--workers must all be at least 1, got {args.workers}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    domain = load_domain()
    ids = [t.id for t in domain.tasks]
    trials = math.ceil(args.episodes / len(ids))
    task_ids = ids[:math.ceil(args.episodes / trials)]
    policy = ReferencePolicy(domain)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            summary = collect(domain, policy, task_ids=task_ids, trials=trials, workers=workers,
                              out_path=Path(tmp) / f"w{workers}.jsonl", max_steps=args.max_steps,
                              model_version="oracle", seed=args.seed)
            rows.append({"workers": workers, "episodes": summary.episodes, "seconds": round(summary.seconds, 3),
                         "episodes_per_s": round(summary.episodes / summary.seconds, 1),
                         "success_rate": summary.success_rate, "policy_share": round(summary.policy_share, 4),
                         "env_share": round(1 - summary.policy_share, 4),
                         "policy_s": round(summary.policy_seconds, 4), "env_s": round(summary.env_seconds, 4)})
    print(f"acme_shop, ScriptedUser, oracle policy: {len(task_ids)} tasks x {trials} trials per row")
    print(f"{'workers':>7} {'episodes':>8} {'seconds':>8} {'ep/s':>8} {'success':>8} {'policy %':>9} {'env %':>7}")
    for r in rows:
        print(f"{r['workers']:>7} {r['episodes']:>8} {r['seconds']:>8.2f} {r['episodes_per_s']:>8.1f} "
              f"{r['success_rate']:>8.2f} {100 * r['policy_share']:>9.2f} {100 * r['env_share']:>7.2f}")
    out = {"domain": "acme_shop", "user": "ScriptedUser", "policy": "oracle", "tasks": len(task_ids),
           "trials": trials, "rows": rows, "cpus": os.cpu_count(), "load": os.getloadavg()[0],
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
