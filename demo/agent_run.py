"""The agent demo behind ``flywheel demo --agent [--out DIR] [--fast]``: the agent flow on Acme Shop, offline.

1. production agent transcripts: ``demo.agent_logs`` writes ``<out>/agent_logs`` (a noisy production agent on the
   environment's TRAIN tasks, one interaction-log row per model call, with its ``resolved`` / ``escalated`` feedback);
2. ``<out>/flywheel.agent.yaml``: the state folder, the transcripts, sizes and counts only (the RL recipe is the
   ``train`` defaults, as in the triage demo);
3. the agent-training flow (``flows/agent_training.py``): the tiny base fitted on the transcripts (it imitates
   production, mistakes included) → the champion on the held-out TEST tasks → its good TRAIN-task episodes
   rejection-sampled into a synthetic dataset → SFT → multi-turn RL → the candidate on the same TEST tasks →
   the release under ``<project>-agent``;
4. the summary table, ``<out>/agent_report.json`` and ``<out>/agent_report.md``: held-out success of champion and
   candidate (95 % Wilson intervals), pass^k, the gain with a paired bootstrap interval over the test tasks, the
   synthetic dataset's counts and the release decision.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from demo.agent_logs import generate_agent_logs
from flows.agent_training import AgentRunRecord, agent_training

# Full: the settings benchmarks/bench_agent.py measured (README, "Learning, measured": 600 conversations, the base
# fitted 400 steps, 60 RL updates of 8 tasks x 4 episodes, 8 trials per test task). Fast: tests and smoke checks.
FULL = dict(days=3, conversations_per_day=200, tiny={},
            agent={"rollout_trials": 4, "sft_epochs": 3, "rl_steps": 60, "tasks_per_update": 8,
                   "episodes_per_task": 4, "eval_trials": 8})
FAST = dict(days=1, conversations_per_day=40,
            tiny={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "fit_steps": 3,
                  "fit_batch_size": 4, "vocab_size": 400},
            agent={"rollout_trials": 1, "success_threshold": 0.0, "sft_epochs": 1, "rl_steps": 1,
                   "tasks_per_update": 2, "episodes_per_task": 2, "eval_trials": 2, "max_new_tokens": 8,
                   "max_steps": 2})
PROJECT = "acme-shop"


def agent_demo_config(out: Path, sizes: dict, seed: int) -> dict[str, Any]:
    """The agent demo's flywheel YAML (as a dict): state and transcripts under ``out``, sizes and counts only."""
    return {
        "project": {"name": PROJECT, "state_dir": str((out / "agent_state").resolve())},
        "model": {"base": "tiny", "tiny": sizes["tiny"]},
        "train": {"seed": seed},
        "agent": {"transcripts": str((out / "agent_logs").resolve()), **sizes["agent"]},
    }


def write_agent_config(out: Path, raw: dict[str, Any]) -> Path:
    import yaml

    from flywheel.config import config_from_dict

    config_from_dict(raw, "agent demo config")  # fail here, with key paths, if a section changed
    path = out / "flywheel.agent.yaml"
    path.write_text("# Written by `flywheel demo --agent`: the config the agent flow ran with.\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


def success_gain(champion: dict[str, list[bool]], candidate: dict[str, list[bool]], seed: int = 0) -> dict:
    """Candidate − champion held-out success, paired by test task: the mean over tasks of the difference of their
    success rates, with a bootstrap 95 % interval that resamples tasks (both policies played the same tasks)."""
    from flywheel.stats import paired_diff_ci

    tasks = sorted(set(champion) & set(candidate))
    if not tasks:
        raise ValueError("success_gain: the two evaluations share no task")
    a = [sum(champion[t]) / len(champion[t]) for t in tasks]   # [tasks] champion success rate per task
    b = [sum(candidate[t]) / len(candidate[t]) for t in tasks]  # [tasks] candidate success rate per task
    est = paired_diff_ci(b, a, seed=seed)
    return {"tasks": len(tasks), "gain": est.mean, "ci": [est.lo, est.hi],
            "tasks_better": sum(y > x for x, y in zip(a, b)), "tasks_worse": sum(y < x for x, y in zip(a, b))}


def agent_report(record: AgentRunRecord, production: dict, sizes: dict, config: Path, timing: dict) -> dict:
    def arm(e) -> dict:
        return {"success_rate": e.success_rate, "success_ci": list(e.success_ci), "episodes": e.episodes,
                "tasks": e.tasks, "pass_hat_k": e.pass_hat_k, "end_reasons": e.end_reasons}

    return {
        "description": ("Acme Shop customer support agent: the tiny base imitates production's agent transcripts; "
                        "held-out success is measured on the environment's TEST tasks, never in the transcripts."),
        "config": str(config), "fast": sizes is FAST, "production": production,
        "champion": arm(record.champion) | {"version": record.champion_version},
        "candidate": arm(record.candidate),
        "gain": success_gain(record.champion.success_by_task, record.candidate.success_by_task),
        "synthetic": record.synthetic["counts"], "rl_curve": record.rl_curve,
        "release": record.release.model_dump(mode="json"), "run_dir": record.run_dir, "timing": timing,
    }


def report_markdown(report: dict) -> str:
    def row(name: str, a: dict) -> str:
        k = max(a["pass_hat_k"], key=int)
        lo, hi = a["success_ci"]
        return f"| {name} | {100 * a['success_rate']:.1f} % [{lo:.1f}, {hi:.1f}] | {a['pass_hat_k'][k]:.3f} (k={k}) |"

    g, s, r = report["gain"], report["synthetic"], report["release"]
    return "\n".join([
        "# rl-flywheel agent demo (Acme Shop)", "", report["description"], "",
        f"Production: {report['production']['conversations']} conversations, success "
        f"{100 * report['production']['success_rate']:.1f} %.", "",
        "| policy | held-out success, 95 % Wilson CI | pass^k |", "|---|---|---|",
        row(f"champion (v{report['champion']['version']})" if report["champion"]["version"] else
            "champion (the base: imitates production)", report["champion"]),
        row("candidate (rejection-sampled SFT, then RL)", report["candidate"]), "",
        f"Gain, paired over {g['tasks']} test tasks: {100 * g['gain']:+.1f} points, 95 % CI "
        f"[{100 * g['ci'][0]:+.1f}, {100 * g['ci'][1]:+.1f}] ({g['tasks_better']} tasks better, "
        f"{g['tasks_worse']} worse).", "",
        f"Synthetic dataset: {s['kept']} of {s['trajectories_in']} episodes kept ({s['tasks_kept']} of "
        f"{s['tasks_in']} train tasks).", "",
        f"Release: {r['model_name']} v{r['version']} **{r['decision']}**: {r['reason']}", "",
        f"Total {report['timing']['total_s']:.0f} s (fit base + flow).",
    ]) + "\n"


def print_agent_summary(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="rl-flywheel agent demo: held-out TEST tasks (scripted user)")
    for h in ("policy", "success", "95 % CI", "pass^k", "episodes"):
        table.add_column(h, justify="left" if h == "policy" else "right")
    for name in ("champion", "candidate"):
        a = report[name]
        k = max(a["pass_hat_k"], key=int)
        table.add_row(name, f"{100 * a['success_rate']:.1f} %", f"[{a['success_ci'][0]:.1f}, {a['success_ci'][1]:.1f}]",
                      f"{a['pass_hat_k'][k]:.3f} (k={k})", str(a["episodes"]))
    console.print(table)
    g, r = report["gain"], report["release"]
    console.print(f"gain {100 * g['gain']:+.1f} points, paired 95 % CI [{100 * g['ci'][0]:+.1f}, "
                  f"{100 * g['ci'][1]:+.1f}] over {g['tasks']} test tasks; release {r['model_name']} v{r['version']}: "
                  f"{r['decision']} ({r['reason']})")


def run_agent_demo(out: str | Path, fast: bool = False, seed: int = 0) -> dict:
    """Run the agent demo into ``out``; returns the report's paths and the report dict."""
    from rich.console import Console

    from flywheel.config import load_config

    console, t0, out = Console(), time.perf_counter(), Path(out)
    sizes = FAST if fast else FULL
    for sub in ("agent_logs", "agent_state"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    config = write_agent_config(out, agent_demo_config(out, sizes, seed))
    console.rule("1. production agent transcripts (Acme Shop)")
    logs = generate_agent_logs(out / "agent_logs", days=sizes["days"],
                               conversations_per_day=sizes["conversations_per_day"], seed=seed)
    console.print(f"{logs.conversations} conversations of the production agent; success {100 * logs.success_rate:.1f}"
                  f" % (mistakes: {dict(logs.mistakes)})")
    console.rule("2. the agent flow: base -> champion -> rejection sampling -> SFT -> RL -> evaluate -> release")
    t_flow = time.perf_counter()
    record = agent_training(load_config(config))
    timing = {"flow_s": round(time.perf_counter() - t_flow, 2), "total_s": round(time.perf_counter() - t0, 2)}
    report = agent_report(record, logs.to_dict(), sizes, config, timing)
    console.rule("summary")
    print_agent_summary(report, console)
    json_path, md_path = out / "agent_report.json", out / "agent_report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    md_path.write_text(report_markdown(report))
    console.print(f"total {timing['total_s']:.0f} s")
    return {"report_json": str(json_path), "report_md": str(md_path), "report": report}
