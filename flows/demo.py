"""The embedded offline demo behind ``make demo`` / ``flywheel demo --out DIR [--fast]``.

1. generate three days of Acme Shop support logs (``<out>/generated``, gold answers kept apart in ``_gold/``);
2. day 0: copy its partition into the source folder (``<out>/logs``, the S3 stand-in) and bootstrap the champion
   (tiny base built offline, SFT on the answers production marked resolved, registered as ``champion``);
3. nights 1 and 2: the day's partition "arrives" in the source folder, then the nightly Prefect flow runs on it
   (the second night starts from whatever the first left as champion);
4. the summary table, ``report.json`` and ``report.html`` — with, next to the pipeline's own numbers, the champion's
   accuracy against the generator's gold answers on the held-out newest prompts (the honest measure; the pipeline
   itself never sees gold).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from flywheel import demo_data

# Sizes: full = `make demo` (target <= 10 min on 2 cores), fast = tests and smoke checks.
# ``tiny`` overrides ``model.tiny`` (the offline base): the full demo fits it long enough to copy order ids.
FULL = dict(rows_per_day=400, train_steps=8, sft_epochs=3, eval_prompts=96, rm_epochs=1, max_prompts=200, tiny={})
FAST = dict(rows_per_day=240, train_steps=3, sft_epochs=2, eval_prompts=32, rm_epochs=1, max_prompts=64,
            tiny={"hidden_size": 128, "num_layers": 2, "fit_steps": 10, "fit_batch_size": 8})


class DemoError(RuntimeError):
    """The demo could not finish; the message says which step and why."""


def demo_config(out: Path, sizes: dict, seed: int) -> dict[str, Any]:
    """The demo's flywheel YAML (as a dict): local source, state under ``out``, sizes for a 2-core laptop."""
    return {
        "project": {"name": "support-bot", "state_dir": str((out / "state").resolve())},
        "source": {"uri": str((out / "logs").resolve())},
        "model": {"base": "tiny", "tiny": sizes["tiny"]},
        # the PPO recipe bench_efficacy measured (+13 gold points after 100 updates); a demo night runs only a few
        "train": {"seed": seed, "steps": sizes["train_steps"], "max_prompts": sizes["max_prompts"], "advantage": "rloo",
                  "temperature": 0.7, "learning_rate": 1e-3, "ppo_epochs": 1, "num_minibatches": 1},
        "rewards": {"reward_model": {"epochs": sizes["rm_epochs"], "max_length": 192}},
        "evaluate": {"max_prompts": sizes["eval_prompts"]},
    }


def write_config(out: Path, raw: dict[str, Any]) -> Path:
    import yaml

    from flywheel.config import config_from_dict

    config_from_dict(raw, "demo config")  # fail here, with key paths, if a section changed
    path = out / "flywheel.yaml"
    path.write_text("# Written by `flywheel demo`: the config the demo's flows ran with.\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def arrive(generated: Path, source: Path, day: str) -> None:
    """Production "writes" the day's partition into the source folder (the S3 stand-in)."""
    dst = source / f"dt={day}"
    if not dst.exists():
        shutil.copytree(generated / f"dt={day}", dst)


def run_demo(out: str | Path, fast: bool = False, seed: int = 0) -> dict:
    """Run the whole demo into ``out``; returns paths and the report dict."""
    from rich.console import Console

    from flows import gold as goldlib
    from flows.bootstrap import bootstrap_champion
    from flows.continuous_improvement import StageFailed, continuous_improvement
    from flywheel import demo_report

    console = Console()
    t_start = time.perf_counter()
    out = Path(out)
    sizes = FAST if fast else FULL
    if out.exists():
        for sub in ("generated", "logs", "state"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    raw = demo_config(out, sizes, seed)
    config_path = write_config(out, raw)
    generated, source = out / "generated", out / "logs"
    source.mkdir(exist_ok=True)

    console.rule("1. three days of production logs")
    summary = demo_data.generate_logs(generated, days=3, rows_per_day=sizes["rows_per_day"], seed=seed)
    console.print(f"{summary.rows} rows in {summary.objects} objects, days {', '.join(summary.days)}; "
                  f"production accuracy {100 * summary.logged_accuracy:.1f} % "
                  f"(by intent: {', '.join(f'{k} {100 * v:.0f} %' for k, v in summary.accuracy_by_intent.items())}); "
                  f"defects {sum(summary.defects.values())}")
    timing: dict[str, float] = {"generate_s": round(time.perf_counter() - t_start, 2)}
    eval_fraction = 0.2

    console.rule(f"2. day 0 ({summary.days[0]}): bootstrap the champion")
    arrive(generated, source, summary.days[0])
    t0 = time.perf_counter()
    try:
        boot = bootstrap_champion(config_path=str(config_path), day=summary.days[0], sft_epochs=sizes["sft_epochs"])
    except StageFailed as e:
        raise DemoError(f"bootstrap: {e}") from e
    timing["bootstrap_s"] = round(time.perf_counter() - t0, 2)
    flow_seconds, stage_seconds = timing["bootstrap_s"], sum(boot.stage_run_seconds.values())
    console.print(f"champion v{boot.champion_version}: SFT on {boot.sft_rows} resolved answers of {boot.rows_clean} "
                  f"clean rows ({boot.base_model})")

    nights = []
    champion_adapter = boot.adapter_uri
    for k, day in enumerate(summary.days[1:], start=1):
        console.rule(f"{k + 2}. night {k} ({day}): the nightly flow")
        arrive(generated, source, day)
        t0 = time.perf_counter()
        try:
            rec = continuous_improvement(config_path=str(config_path), day=day)
        except StageFailed as e:
            raise DemoError(f"night {k} ({day}): {e}") from e
        seconds = time.perf_counter() - t0
        flow_seconds += seconds
        stage_seconds += sum(rec.stage_run_seconds.values())
        heldout = goldlib.heldout_gold(generated, day, eval_fraction, sizes["eval_prompts"])
        before = goldlib.gold_accuracy(boot.base_model, champion_adapter, heldout)
        after_cand = goldlib.gold_accuracy(boot.base_model, rec.candidate_uri, heldout) if rec.candidate_uri else None
        if rec.promoted and rec.candidate_uri:
            champion_adapter = rec.candidate_uri
        nights.append({
            "night": k, "day": day, **rec.model_dump(include={
                "rows_in", "rows_clean", "rows_quarantined", "champion_reward", "candidate_reward", "candidate_ci",
                "promoted", "champion_version", "candidate_version", "gain", "gain_ci", "decision", "reason", "gates",
                "components", "reward_curve", "deploy", "stage_seconds", "stage_run_seconds", "cached", "status"}),
            "gold_accuracy": {"champion": before["accuracy"], "champion_ci": before["ci"],
                              "candidate": after_cand["accuracy"] if after_cand else None,
                              "candidate_ci": after_cand["ci"] if after_cand else None,
                              "per_intent": {"champion": before["per_intent"],
                                             "candidate": after_cand["per_intent"] if after_cand else None},
                              "promoted": rec.promoted, "n": before["n"]},
            "links": {"mlflow_train_run": rec.train_run_id, "evaluation_report": rec.eval_report_html},
            "seconds": round(seconds, 2),
        })
        console.print(f"night {k}: {rec.decision} — {rec.reason}")

    timing["flows_s"] = round(flow_seconds, 2)
    timing["tasks_running_s"] = round(stage_seconds, 2)
    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    timing["prefect_overhead_share"] = round(max(flow_seconds - stage_seconds, 0.0) / max(flow_seconds, 1e-9), 4)
    report = {
        "description": ("Three days of Acme Shop support-triage logs; day 0 bootstraps the champion (SFT on resolved "
                        "answers), nights 1-2 run observe -> validate -> judge -> train (PPO) -> evaluate -> promote -> "
                        "deploy. Gold accuracy is measured outside the pipeline on the held-out newest prompts."),
        "config": str(config_path), "fast": fast, "seed": seed,
        "logs": summary.to_dict(),
        "bootstrap": boot.model_dump(),
        "nights": nights,
        "timing": timing,
    }
    console.rule("summary")
    demo_report.print_summary(nights, console)
    json_path = demo_report.write_json(report, out / "report.json")
    html_path = demo_report.write_html(report, out / "report.html")
    console.print(f"total {timing['total_s']:.0f} s; Prefect overhead {100 * timing['prefect_overhead_share']:.1f} % "
                  f"of the flows' wall time (temporary server start included)")
    return {"report_json": str(json_path), "report_html": str(html_path), "report": report}


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / "report.json").read_text())
