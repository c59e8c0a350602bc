"""The embedded offline demo behind ``make demo`` / ``flywheel demo --out DIR [--task NAME] [--fast]``.

1. generate three days of the task's production logs (``<out>/generated``, gold answers kept apart in ``_gold/``);
2. day 0: copy its partition into the source folder (``<out>/logs``, the S3 stand-in) and bootstrap the champion
   (tiny base built offline, SFT on the answers production's feedback marked good, registered as ``champion``);
3. nights 1 and 2: the day's partition "arrives" in the source folder, then the nightly Prefect flow runs on it
   (the second night starts from whatever the first left as champion);
4. the summary table, ``report.json`` and ``report.html`` — with, next to the pipeline's own numbers, the champion's
   accuracy against the generator's gold answers on the held-out newest prompts (the honest measure; the pipeline
   itself never sees gold).

The YAML the demo writes sets only sizes, counts and the task's own reward rules: the training recipe is the
pipeline's default, so the demo shows what the defaults do.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo import get_task
from demo import gold as goldlib
from demo import report as demo_report
from demo.logs import DemoLogSummary, DemoTask, generate_logs
from flows.bootstrap import BootstrapRecord, bootstrap_champion
from flows.continuous_improvement import NightRecord, StageFailed, continuous_improvement

# Sizes: full = `make demo` (target <= 10 min on 2 cores), fast = tests and smoke checks.
# ``tiny`` overrides ``model.tiny`` (the offline base); the full demo keeps its defaults (400 fit steps: it copies ids).
# Full, measured (README): 1,500 rows/day are cheap to generate and validate and give day 0 enough answers marked
# good for the RFT champion to imitate production (~80 % gold, 0 % on the kind production gets wrong); the time goes
# where learning is bought: the reward model's epochs over all feedback so far (its swapped-answer accuracy carries
# the intent signal: 2 epochs gave 0.61 on it_helpdesk and PPO fooled it, 4 give 0.90-0.98) and the PPO updates per
# night (each 16 prompts x 4 samples, ~0.7-1.0 s on 2 cores); 300 eval prompts, as at 200 night 2's reward-gain CI
# crossed 0 while its gold accuracy rose 4.5 points.
FULL = dict(rows_per_day=1500, train_steps=100, sft_epochs=4, eval_prompts=300, rm_epochs=4, max_prompts=1000, tiny={})
FAST = dict(rows_per_day=240, train_steps=3, sft_epochs=2, eval_prompts=32, rm_epochs=1, max_prompts=64,
            tiny={"hidden_size": 128, "num_layers": 2, "fit_steps": 10, "fit_batch_size": 8})
EVAL_FRACTION = 0.2  # evaluate.eval_fraction: the newest share of a night's rows, never trained on


class DemoError(RuntimeError):
    """The demo could not finish; the message says which step and why."""


@dataclass
class DemoRun:
    """Where one demo run writes, what it runs on, and the seconds it spent."""

    task: DemoTask
    out: Path
    sizes: dict
    seed: int
    config_path: Path = Path()
    timing: dict[str, float] = field(default_factory=dict)
    flow_seconds: float = 0.0  # wall time of the Prefect flows
    stage_seconds: float = 0.0  # time the stages' own functions ran inside them

    @property
    def generated(self) -> Path:
        return self.out / "generated"

    @property
    def source(self) -> Path:
        return self.out / "logs"


def demo_config(out: Path, task: DemoTask, sizes: dict, seed: int) -> dict[str, Any]:
    """The demo's flywheel YAML (as a dict): local source, state under ``out``, sizes for a 2-core laptop."""
    return {
        "project": {"name": task.PROJECT, "state_dir": str((out / "state").resolve())},
        "source": {"uri": str((out / "logs").resolve())},
        "model": {"base": "tiny", "tiny": sizes["tiny"]},
        # sizes and counts only: the demo proves the train defaults
        "train": {"seed": seed, "steps": sizes["train_steps"], "max_prompts": sizes["max_prompts"]},
        "rewards": {"components": task.reward_components(),
                    "reward_model": {"epochs": sizes["rm_epochs"], "max_length": 192}},
        "evaluate": {"max_prompts": sizes["eval_prompts"], "eval_fraction": EVAL_FRACTION},
    }


def write_config(out: Path, raw: dict[str, Any]) -> Path:
    import yaml

    from flywheel.config import config_from_dict

    config_from_dict(raw, "demo config")  # fail here, with key paths, if a section changed
    path = out / "flywheel.yaml"
    path.write_text("# Written by `flywheel demo`: the config the demo's flows ran with.\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


def arrive(generated: Path, source: Path, day: str) -> None:
    """Production "writes" the day's partition into the source folder (the S3 stand-in)."""
    dst = source / f"dt={day}"
    if not dst.exists():
        shutil.copytree(generated / f"dt={day}", dst)


# ---------------------------------------------------------------------------------------------------- steps
def prepare(run: DemoRun) -> None:
    """Clear what an earlier run left in ``out`` and write the config."""
    for sub in ("generated", "logs", "state"):
        shutil.rmtree(run.out / sub, ignore_errors=True)
    run.out.mkdir(parents=True, exist_ok=True)
    run.source.mkdir()
    run.config_path = write_config(run.out, demo_config(run.out, run.task, run.sizes, run.seed))


def generate(run: DemoRun, console) -> DemoLogSummary:
    t0 = time.perf_counter()
    summary = generate_logs(run.task, run.generated, days=3, rows_per_day=run.sizes["rows_per_day"], seed=run.seed)
    console.print(f"{summary.rows} rows in {summary.objects} objects, days {', '.join(summary.days)}; "
                  f"production accuracy {100 * summary.logged_accuracy:.1f} % (by kind: "
                  + ", ".join(f"{k} {100 * v:.0f} %" for k, v in summary.accuracy_by_kind.items())
                  + f"); defects {sum(summary.defects.values())}")
    run.timing["generate_s"] = round(time.perf_counter() - t0, 2)
    return summary


def bootstrap(run: DemoRun, day: str, console) -> BootstrapRecord:
    """Day 0: the first partition arrives; the bootstrap flow registers the first champion."""
    arrive(run.generated, run.source, day)
    t0 = time.perf_counter()
    try:
        boot = bootstrap_champion(config_path=str(run.config_path), day=day, sft_epochs=run.sizes["sft_epochs"])
    except StageFailed as e:
        raise DemoError(f"bootstrap: {e}") from e
    run.timing["bootstrap_s"] = round(time.perf_counter() - t0, 2)
    run.flow_seconds += run.timing["bootstrap_s"]
    run.stage_seconds += sum(boot.stage_run_seconds.values())
    console.print(f"champion v{boot.champion_version}: SFT on {boot.sft_rows} answers marked good of "
                  f"{boot.rows_clean} clean rows ({boot.base_model})")
    return boot


def run_night(run: DemoRun, k: int, day: str) -> NightRecord:
    """Night ``k``: the day's partition arrives; the nightly flow runs on it."""
    arrive(run.generated, run.source, day)
    t0 = time.perf_counter()
    try:
        rec = continuous_improvement(config_path=str(run.config_path), day=day)
    except StageFailed as e:
        raise DemoError(f"night {k} ({day}): {e}") from e
    run.flow_seconds += time.perf_counter() - t0
    run.stage_seconds += sum(rec.stage_run_seconds.values())
    return rec


class GoldMeter:
    """Gold accuracy of the champion, measured after each step on one fixed yardstick: the held-out newest prompts of
    the last day (no stage ever trains on them), so day 0 -> night 1 -> night 2 compare on the same prompts."""

    def __init__(self, run: DemoRun, day: str):
        self.task = run.task
        self.day = day
        self.gold = goldlib.heldout_gold(run.task, run.generated, day, EVAL_FRACTION, run.sizes["eval_prompts"])
        self.seconds = 0.0
        self._cache: dict[tuple[str, str | None], dict] = {}

    def production(self) -> dict:
        """Production's own accuracy on the yardstick (its logged answers), overall and per kind."""
        hits = [bool(g.get("logged_correct")) for g in self.gold]
        per_kind = {}
        for kind in self.task.KINDS:
            idx = [i for i, g in enumerate(self.gold) if g["kind"] == kind]
            if idx:
                per_kind[kind] = round(100 * sum(hits[i] for i in idx) / len(idx), 1)
        k, n = sum(hits), len(hits)
        return {"accuracy": round(100 * k / max(n, 1), 2), "ci": goldlib.wilson_ci(k, n), "n": n,
                "per_kind": per_kind}

    def measure(self, base: str, adapter: str | None) -> dict:
        key = (str(base), str(adapter) if adapter else None)
        if key not in self._cache:
            t0 = time.perf_counter()
            res = goldlib.gold_accuracy(self.task, base, adapter, self.gold)
            self.seconds += time.perf_counter() - t0
            self._cache[key] = {k: res[k] for k in ("accuracy", "ci", "n", "per_kind")}
        return self._cache[key]


def night_row(run: DemoRun, k: int, day: str, rec: NightRecord, base: str, champion_adapter: str | None,
              seconds: float, meter: GoldMeter | None = None) -> dict:
    """The report's row of one night: the pipeline's numbers, gold accuracy of champion and candidate on the night's
    held-out prompts and (``meter``) of the champion after the night's decision on the fixed yardstick."""
    heldout = goldlib.heldout_gold(run.task, run.generated, day, EVAL_FRACTION, run.sizes["eval_prompts"])
    before = goldlib.gold_accuracy(run.task, base, champion_adapter, heldout)
    after = goldlib.gold_accuracy(run.task, base, rec.candidate_uri, heldout) if rec.candidate_uri else None
    gold = {"champion": before["accuracy"], "champion_ci": before["ci"],
            "candidate": after["accuracy"] if after else None,
            "candidate_ci": after["ci"] if after else None,
            "per_kind": {"champion": before["per_kind"], "candidate": after["per_kind"] if after else None},
            "promoted": rec.promoted, "n": before["n"]}
    if meter is not None:
        now = meter.measure(base, rec.candidate_uri if rec.promoted and rec.candidate_uri else champion_adapter)
        gold |= {"champion_after": now["accuracy"], "champion_after_ci": now["ci"], "yardstick_day": meter.day,
                 "yardstick_n": now["n"]}
        gold["per_kind"]["champion_after"] = now["per_kind"]
        if rec.candidate_uri:  # the candidate on the same yardstick, promoted or not
            cand = meter.measure(base, rec.candidate_uri)
            gold |= {"candidate_yardstick": cand["accuracy"], "candidate_yardstick_ci": cand["ci"]}
            gold["per_kind"]["candidate_yardstick"] = cand["per_kind"]
    return {
        "night": k, "day": day, **rec.model_dump(include={
            "rows_in", "rows_clean", "rows_quarantined", "champion_reward", "candidate_reward", "candidate_ci",
            "promoted", "champion_version", "candidate_version", "gain", "gain_ci", "decision", "reason", "gates",
            "components", "reward_curve", "deploy", "stage_seconds", "stage_run_seconds", "cached", "status",
            "canary"}),
        "gold_accuracy": gold,
        "links": {"mlflow_train_run": rec.train_run_id, "evaluation_report": rec.eval_report_html},
        "seconds": round(seconds, 2),
    }


def write_outputs(run: DemoRun, summary: DemoLogSummary, boot: BootstrapRecord, nights: list[dict],
                  t_start: float, console, meter: GoldMeter | None = None, boot_gold: dict | None = None) -> dict:
    timing = run.timing
    timing["flows_s"] = round(run.flow_seconds, 2)
    timing["tasks_running_s"] = round(run.stage_seconds, 2)
    if meter is not None:
        timing["gold_s"] = round(meter.seconds, 2)  # the yardstick decodes (outside the pipeline)
    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    overhead = max(run.flow_seconds - run.stage_seconds, 0.0) / max(run.flow_seconds, 1e-9)
    timing["prefect_overhead_share"] = round(overhead, 4)
    report = {
        "task": run.task.NAME,
        "description": (f"{run.task.DESCRIPTION}. Three days of logs; day 0 bootstraps the champion (SFT on the "
                        "answers production's feedback marked good), nights 1-2 run observe -> validate -> score -> "
                        "train (PPO) -> evaluate -> promote -> deploy. Gold accuracy is measured outside the "
                        "pipeline on the held-out newest prompts."),
        "config": str(run.config_path), "fast": run.sizes is FAST, "seed": run.seed,
        "logs": summary.to_dict(), "bootstrap": boot.model_dump() | ({"gold_accuracy": boot_gold} if boot_gold else {}),
        "nights": nights, "timing": timing,
    }
    if meter is not None:
        report["gold_yardstick"] = {"day": meter.day, "n": len(meter.gold), "production": meter.production(),
                                    "what": "the newest held-out prompts of the last day, never trained on"}
    report["goals"] = demo_report.goal_checks(report)
    console.rule("summary")
    demo_report.print_summary(nights, console, report)
    json_path = demo_report.write_json(report, run.out / "report.json")
    html_path = demo_report.write_html(report, run.out / "report.html")
    console.print(f"total {timing['total_s']:.0f} s; Prefect overhead {100 * overhead:.1f} % "
                  f"of the flows' wall time (temporary server start included)")
    return {"report_json": str(json_path), "report_html": str(html_path), "report": report}


def run_demo(out: str | Path, fast: bool = False, seed: int = 0, task: str = "support_triage") -> dict:
    """Run the whole demo for the built-in ``task`` into ``out``; returns paths and the report dict."""
    from rich.console import Console

    console, t_start = Console(), time.perf_counter()
    run = DemoRun(task=get_task(task), out=Path(out), sizes=FAST if fast else FULL, seed=seed)
    prepare(run)
    console.rule(f"1. three days of production logs ({run.task.NAME})")
    summary = generate(run, console)
    console.rule(f"2. day 0 ({summary.days[0]}): bootstrap the champion")
    boot = bootstrap(run, summary.days[0], console)
    meter = GoldMeter(run, summary.days[-1])
    boot_gold = meter.measure(boot.base_model, boot.adapter_uri) | {"yardstick_day": meter.day}
    console.print(f"day-0 champion gold accuracy {boot_gold['accuracy']:.1f} % {list(boot_gold['ci'])} on "
                  f"{boot_gold['n']} held-out prompts of {meter.day}; "
                  f"production {meter.production()['accuracy']:.1f} %")
    nights, champion_adapter = [], boot.adapter_uri
    for k, day in enumerate(summary.days[1:], start=1):
        console.rule(f"{k + 2}. night {k} ({day}): the nightly flow")
        t0 = time.perf_counter()
        rec = run_night(run, k, day)
        nights.append(night_row(run, k, day, rec, boot.base_model, champion_adapter, time.perf_counter() - t0, meter))
        if rec.promoted and rec.candidate_uri:
            champion_adapter = rec.candidate_uri
        console.print(f"night {k}: {rec.decision} — {rec.reason}")
    return write_outputs(run, summary, boot, nights, t_start, console, meter, boot_gold)


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / "report.json").read_text())
