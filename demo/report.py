"""The demo's summary: a table on the terminal, ``report.json`` and ``report.html`` (champion gold path, reward curves).

Input is plain data (one dict per night, built by ``flows.demo`` from the nightly flow's records), so this module
knows nothing about Prefect, MLflow or torch.

``report.json``::

    {"nights": [{"night": 1, "day": "2026-11-24", "rows_in": ..., "rows_clean": ..., "rows_quarantined": ...,
                 "champion_reward": ..., "candidate_reward": ..., "candidate_ci": [lo, hi], "promoted": true,
                 "champion_version": "2", "gates": [...], "reward_curve": [...], "components": {...},
                 "gold_accuracy": {"champion": ..., "candidate": ...,            # on the night's held-out prompts
                                   "champion_after": ..., "champion_after_ci": [lo, hi],  # on the yardstick
                                   "candidate_yardstick": ..., "per_kind": {...}}, "seconds": ...}, ...],
     "bootstrap": {..., "gold_accuracy": {"accuracy", "ci", "per_kind", "n"}},  # the day-0 champion, yardstick
     "gold_yardstick": {"day", "n", "production": {...}},  # the last day's held-out prompts; production's accuracy
     "goals": [{"name", "met", "detail"}, ...], "timing": {...}}

The yardstick is one fixed prompt set (the newest held-out prompts of the last day, never trained on), so the
champion's path day 0 -> night 1 -> night 2 compares like with like; ``goals`` says which demo goals the run met.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

NIGHT_KEYS = ["rows_in", "rows_clean", "rows_quarantined", "champion_reward", "candidate_reward", "candidate_ci",
              "promoted", "champion_version"]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return f"[{_fmt(x[0], 2)}, {_fmt(x[1], 2)}]"
    return str(x)


def short_reason(night: dict, width: int = 60) -> str:
    """Why the night promoted or kept: the reward gain's CI when every gate passed, else the failed gates by name
    with their values (the full sentence is ``reason``), cut to ``width`` characters."""
    gates = night.get("gates") or []
    failed = [g for g in gates if not g.get("passed")]
    if night.get("promoted"):
        ci = night.get("gain_ci")
        text = (f"all gates passed; gain CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci and len(ci) == 2 and None not in ci
                else "all gates passed")
    elif failed:
        text = "failed " + ", ".join(f"{g.get('name')} {_fmt(g.get('value'), 4)}" for g in failed)
    else:
        text = str(night.get("reason") or night.get("status") or "-")
    return text if len(text) <= width else text[:width - 3] + "..."


def summary_rows(nights: list[dict]) -> list[list[str]]:
    """One row of strings per night, in the order of :data:`TABLE_HEADER`."""
    rows = []
    for n in nights:
        gold = n.get("gold_accuracy") or {}
        rows.append([
            str(n["night"]), n.get("day", "-"), str(n["rows_in"]), str(n["rows_clean"]), str(n["rows_quarantined"]),
            _fmt(n["champion_reward"]), _fmt(n["candidate_reward"]), _fmt(n["candidate_ci"]),
            f"{_fmt(gold.get('champion'), 1)} -> {_fmt(gold.get('candidate'), 1)}" if gold else "-",
            "promoted" if n["promoted"] else "kept champion", f"v{n['champion_version']}", short_reason(n),
        ])
    return rows


TABLE_HEADER = ["night", "day", "rows in", "clean", "quarant.", "champion R", "candidate R", "candidate 95% CI",
                "gold % champ->cand", "decision", "champion", "why"]


def champion_path(report: dict) -> list[dict]:
    """The champion's gold accuracy on the fixed yardstick: day 0, then after each night's decision.

    Each point: ``label``, ``accuracy``, ``ci``, ``per_kind``, ``version``. Reports without the yardstick (older
    runs) fall back to each night's own held-out numbers.
    """
    nights = report.get("nights") or []
    boot = (report.get("bootstrap") or {}).get("gold_accuracy")
    points = []
    if boot:
        points.append({"label": "day 0", "accuracy": boot.get("accuracy"), "ci": boot.get("ci"),
                       "per_kind": boot.get("per_kind") or {},
                       "version": (report.get("bootstrap") or {}).get("champion_version")})
    elif nights and (nights[0].get("gold_accuracy") or {}).get("champion") is not None:
        g = nights[0]["gold_accuracy"]
        points.append({"label": "day 0", "accuracy": g.get("champion"), "ci": g.get("champion_ci"),
                       "per_kind": (g.get("per_kind") or {}).get("champion") or {}, "version": None})
    for n in nights:
        g = n.get("gold_accuracy") or {}
        if not g:
            continue
        pk = g.get("per_kind") or {}
        if "champion_after" in g:
            acc, ci, kinds = g["champion_after"], g.get("champion_after_ci"), pk.get("champion_after")
        elif g.get("promoted"):
            acc, ci, kinds = g.get("candidate"), g.get("candidate_ci"), pk.get("candidate")
        else:
            acc, ci, kinds = g.get("champion"), g.get("champion_ci"), pk.get("champion")
        points.append({"label": f"night {n['night']}", "accuracy": acc, "ci": ci, "per_kind": kinds or {},
                       "version": n.get("champion_version"), "candidate": g.get("candidate_yardstick"),
                       "candidate_ci": g.get("candidate_yardstick_ci"), "promoted": bool(n.get("promoted"))})
    return points


GOAL_GAIN_POINTS = 15.0  # champion gold after the last night >= day-0 champion + this
GOAL_NEAR_PRODUCTION = 10.0  # day-0 champion within this many points of production on the kinds it gets right
GOAL_WALL_S, GOAL_PREFECT_SHARE = 600.0, 0.10


def goal_checks(report: dict) -> list[dict]:
    """The demo's goals, each ``{"name", "met", "detail"}``, measured (``met`` None where the report lacks the data)."""
    out = []
    path = champion_path(report)
    prod = (report.get("gold_yardstick") or {}).get("production") or {}
    if path and prod.get("per_kind"):
        right = [k for k, v in prod["per_kind"].items() if v >= 80]
        gaps = {k: round(path[0]["per_kind"].get(k, 0.0) - prod["per_kind"][k], 1) for k in right}
        out.append({"name": "day-0 champion imitates production",
                    "met": bool(gaps) and min(gaps.values()) >= -GOAL_NEAR_PRODUCTION,
                    "detail": "day-0 champion minus production on the kinds production gets right (>= 80 %): "
                              + ", ".join(f"{k} {v:+.1f}" for k, v in gaps.items()) + " points"})
    nights = report.get("nights") or []
    if nights:
        n1 = nights[0]
        g = n1.get("gold_accuracy") or {}
        lo = (n1.get("gain_ci") or [None])[0]
        higher = g.get("candidate") is not None and g.get("champion") is not None and g["candidate"] > g["champion"]
        out.append({"name": "night 1 promotes a better candidate",
                    "met": bool(n1.get("promoted")) and lo is not None and lo > 0 and higher,
                    "detail": f"{n1.get('decision') or ('promoted' if n1.get('promoted') else 'kept')}; reward gain "
                              f"CI low {_fmt(lo, 4)}; gold {_fmt(g.get('champion'), 1)} -> "
                              f"{_fmt(g.get('candidate'), 1)} %"
                              + ("" if n1.get("promoted") else f"; {short_reason(n1, 80)}")})
    if len(path) >= 2 and path[0]["accuracy"] is not None and path[-1]["accuracy"] is not None:
        gain = path[-1]["accuracy"] - path[0]["accuracy"]
        out.append({"name": f"champion gold +{GOAL_GAIN_POINTS:.0f} points by the last night",
                    "met": gain >= GOAL_GAIN_POINTS,
                    "detail": " -> ".join(f"{p['label']} {_fmt(p['accuracy'], 1)} %" for p in path)
                              + f" ({gain:+.1f} points)"})
    timing = report.get("timing") or {}
    if "total_s" in timing:
        out.append({"name": f"wall time <= {GOAL_WALL_S:.0f} s", "met": timing["total_s"] <= GOAL_WALL_S,
                    "detail": f"{timing['total_s']:.0f} s"})
    if "prefect_overhead_share" in timing:
        share = timing["prefect_overhead_share"]
        out.append({"name": f"Prefect overhead <= {100 * GOAL_PREFECT_SHARE:.0f} %", "met": share <= GOAL_PREFECT_SHARE,
                    "detail": f"{100 * share:.1f} % of the flows' wall time"})
    return out


def print_summary(nights: list[dict], console=None, report: dict | None = None) -> None:
    """The summary table (rich) on the terminal; with ``report``, the champion's gold path and the goals too."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if console.width < 180:
        console = Console(width=180)  # the table with its "why" column; a narrower terminal wraps it
    table = Table(title="rl-flywheel demo: nightly runs (R = mean online reward on held-out newest prompts)")
    for h in TABLE_HEADER:
        table.add_column(h, justify="right" if h not in ("day", "decision") else "left")
    for row in summary_rows(nights):
        table.add_row(*row)
    console.print(table)
    if report is None:
        return
    path = champion_path(report)
    if path:
        console.print("champion gold accuracy (95 % CI) on the fixed yardstick: "
                      + " -> ".join(f"{p['label']} {_fmt(p['accuracy'], 1)} % {_fmt(p['ci'])}" for p in path))
    if report.get("fast") and report.get("goals"):
        console.print("  (--fast: a smoke test at test sizes; the goals below are the full demo's)")
    for g in report.get("goals") or []:
        mark = "-" if g["met"] is None else ("met" if g["met"] else "NOT met")
        console.print(f"  goal {g['name']}: {mark} ({g['detail']})")


def check_night(night: dict) -> None:
    """Every night carries the documented keys, and the row counts add up."""
    missing = [k for k in NIGHT_KEYS if k not in night]
    if missing:
        raise ValueError(f"night {night.get('night')}: missing keys {missing}")
    if night["rows_in"] != night["rows_clean"] + night["rows_quarantined"]:
        raise ValueError(f"night {night.get('night')}: rows_in != rows_clean + rows_quarantined")


def write_json(report: dict, path: Path) -> Path:
    for night in report["nights"]:
        check_night(night)
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) pairs: reward curves of each night's PPO, per-component means, gold accuracy overall and
    per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = champion_path(report)
    prod = (report.get("gold_yardstick") or {}).get("production") or {}
    out = []
    for title, draw in (
            ("Reward curves", lambda: _reward_curves(plt, report["nights"])),
            ("Per-component results (mean, 95 % CI)", lambda: _components(plt, report["nights"])),
            ("Champion accuracy against the generator's gold answers (day 0, after each night)",
             lambda: _gold_path(plt, path, prod)),
            ("Champion accuracy per kind (day 0, after each night; production for reference)",
             lambda: _gold_per_kind(plt, path, prod))):
        fig = draw()
        if fig is not None:
            out.append((title, _png(fig)))
            plt.close(fig)
    return out


def _reward_curves(plt, nights: list[dict]):
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for n in nights:
        curve = n.get("reward_curve") or []
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker=".", label=f"night {n['night']} ({n.get('day', '')})")
    ax.set_xlabel("PPO update")
    ax.set_ylabel("mean online reward of samples")
    ax.set_title("Training reward per night")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    return fig


def _components(plt, nights: list[dict]):
    comps = sorted({c for n in nights for c in (n.get("components") or {})})
    if not comps:
        return None
    fig, axes = plt.subplots(1, len(nights), figsize=(3.4 * len(nights), 3.2), squeeze=False)
    for ax, n in zip(axes[0], nights):
        table = n.get("components") or {}
        xs = range(len(comps))
        for off, role, color in ((-0.2, "champion", "#999"), (0.2, "candidate", "#2a7")):
            means = [table.get(c, {}).get(role, {}).get("mean", float("nan")) for c in comps]
            errs = [[m - table.get(c, {}).get(role, {}).get("ci", [m, m])[0] for c, m in zip(comps, means)],
                    [table.get(c, {}).get(role, {}).get("ci", [m, m])[1] - m for c, m in zip(comps, means)]]
            ax.bar([x + off for x in xs], means, width=0.4, color=color, label=role, yerr=errs, capsize=2)
        ax.set_xticks(list(xs), comps, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"night {n['night']}: reward components", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8)
    return fig


def _gold_path(plt, path: list[dict], prod: dict):
    if not path:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = list(range(len(path)))
    accs = [p["accuracy"] if p["accuracy"] is not None else float("nan") for p in path]
    cis = [p["ci"] if p.get("ci") and len(p["ci"]) == 2 else (a, a) for p, a in zip(path, accs)]
    ax.errorbar(xs, accs, yerr=[[a - c[0] for a, c in zip(accs, cis)], [c[1] - a for a, c in zip(accs, cis)]],
                marker="o", capsize=4, color="#37a", label="champion")
    for x, p, a in zip(xs, path, accs):
        ax.annotate(f"{a:.1f}" + (f" (v{p['version']})" if p.get("version") else ""), (x, a),
                    textcoords="offset points", xytext=(6, -12), fontsize=8)
    cands = [(x, p) for x, p in zip(xs, path) if p.get("candidate") is not None]
    if cands:
        cx = [x + 0.08 for x, _ in cands]
        cy = [p["candidate"] for _, p in cands]
        cci = [p.get("candidate_ci") or (p["candidate"], p["candidate"]) for _, p in cands]
        ax.errorbar(cx, cy, yerr=[[y - c[0] for y, c in zip(cy, cci)], [c[1] - y for y, c in zip(cy, cci)]],
                    fmt="o", mfc="white", capsize=3, color="#2a7", label="night's candidate")
        for x, (_, p) in zip(cx, cands):
            ax.annotate("promoted" if p["promoted"] else "rejected", (x, p["candidate"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=7, color="#2a7")
    if prod.get("accuracy") is not None:
        ax.axhline(prod["accuracy"], color="#b55", ls="--", lw=1, label=f"production {prod['accuracy']:.1f} %")
    ax.set_xticks(xs, [p["label"] for p in path])
    ax.set_ylabel("gold accuracy (%), 95 % CI")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _gold_per_kind(plt, path: list[dict], prod: dict):
    kinds = list(dict.fromkeys(k for p in path for k in (p.get("per_kind") or {})))
    if not kinds:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(kinds)), 3.2))
    series = [(p["label"] if p["label"] == "day 0" else f"after {p['label']}", p.get("per_kind") or {})
              for p in path]
    if prod.get("per_kind"):
        series.append(("production", prod["per_kind"]))
    width = 0.8 / len(series)
    colors = ["#9bd", "#59b", "#37a", "#147", "#025"]
    for i, (label, table) in enumerate(series):
        color = "#b55" if label == "production" else colors[min(i, len(colors) - 1)]
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(kinds))],
               [table.get(k, float("nan")) for k in kinds], width=width, label=label, color=color)
    ax.set_xticks(list(range(len(kinds))), kinds, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("gold accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=len(series))
    return fig


def _canary_html(canary: dict) -> list[str]:
    """The canary decisions of a night's window (``NightRecord.canary``) as an HTML table; nothing when none."""
    entries = canary.get("entries") or []
    if not entries:
        return []
    esc = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("at", "challenger", "champion", "decision", "applied", "reason"))
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in (
            e.get("at"), f"v{e.get('challenger_version') or '-'}", f"v{e.get('champion_version') or '-'}",
            e.get("decision"), e.get("applied") or "-", str(e.get("reason", ""))[:160])) + "</tr>"
        for e in entries)
    return [f"<p>Canary decisions ({len(entries)}):</p><table><tr>{head}</tr>{rows}</table>"]


def write_html(report: dict, path: Path) -> Path:
    """A self-contained HTML page: the summary table, gate decisions per night, and the plots (inline PNG)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in TABLE_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in summary_rows(report["nights"]))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rl-flywheel demo report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
        ".fail{color:#b00}.pass{color:#070}</style></head><body>",
        "<h1>rl-flywheel demo</h1>",
        f"<p>{esc(report.get('description', ''))}</p>",
        f"<table><tr>{head}</tr>{body}</table>",
    ]
    goals = report.get("goals") or []
    if goals:
        parts.append("<h2>Goals</h2><ul>")
        for g in goals:
            cls, mark = ("", "-") if g["met"] is None else (("pass", "met") if g["met"] else ("fail", "not met"))
            parts.append(f"<li class='{cls}'>{esc(g['name'])}: <b>{mark}</b> ({esc(g['detail'])})</li>")
        parts.append("</ul>")
    for n in report["nights"]:
        parts.append(f"<h3>Night {n['night']} ({esc(str(n.get('day', '')))}): gates</h3><ul>")
        for g in n.get("gates") or []:
            cls = "pass" if g.get("passed") else "fail"
            parts.append(f"<li class='{cls}'>{esc(str(g.get('name')))}: {esc(_fmt(g.get('value')))} "
                         f"({'pass' if g.get('passed') else 'fail'}) {esc(str(g.get('reason', '')))}</li>")
        parts.append("</ul>")
        parts += _canary_html(n.get("canary") or {})
        if n.get("links"):
            parts.append("<p>" + " · ".join(f"{esc(k)}: <code>{esc(str(v))}</code>" for k, v in n["links"].items())
                         + "</p>")
    for title, png in _plots(report):
        parts.append(f"<h2>{esc(title)}</h2><img src='data:image/png;base64,{png}'>")
    timing = report.get("timing") or {}
    if timing:
        parts.append("<h2>Timing</h2><ul>" + "".join(f"<li>{esc(k)}: {esc(_fmt(v, 1))}</li>" for k, v in timing.items())
                     + "</ul>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
