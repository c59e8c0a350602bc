"""The demo's summary: a table on the terminal, ``report.json`` and ``report.html`` (reward curves, per-component results).

Input is plain data (one dict per night, built by ``flows.demo`` from the nightly flow's records), so this module
knows nothing about Prefect, MLflow or torch.

``report.json``::

    {"nights": [{"night": 1, "day": "2026-11-24", "rows_in": ..., "rows_clean": ..., "rows_quarantined": ...,
                 "champion_reward": ..., "candidate_reward": ..., "candidate_ci": [lo, hi], "promoted": true,
                 "champion_version": "2", "gates": [...], "reward_curve": [...], "components": {...},
                 "gold_accuracy": {"champion": ..., "candidate": ...}, "seconds": ...}, ...],
     "bootstrap": {...}, "timing": {...}}
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


def summary_rows(nights: list[dict]) -> list[list[str]]:
    """One row of strings per night, in the order of :data:`TABLE_HEADER`."""
    rows = []
    for n in nights:
        gold = n.get("gold_accuracy") or {}
        rows.append([
            str(n["night"]), n.get("day", "-"), str(n["rows_in"]), str(n["rows_clean"]), str(n["rows_quarantined"]),
            _fmt(n["champion_reward"]), _fmt(n["candidate_reward"]), _fmt(n["candidate_ci"]),
            f"{_fmt(gold.get('champion'), 1)} -> {_fmt(gold.get('candidate'), 1)}" if gold else "-",
            "promoted" if n["promoted"] else "kept champion", f"v{n['champion_version']}",
        ])
    return rows


TABLE_HEADER = ["night", "day", "rows in", "clean", "quarant.", "champion R", "candidate R", "candidate 95% CI",
                "gold % champ->cand", "decision", "champion"]


def print_summary(nights: list[dict], console=None) -> None:
    """The summary table (rich) on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if console.width < 132:
        console = Console(width=132)
    table = Table(title="rl-flywheel demo: nightly runs (R = mean online reward on held-out newest prompts)")
    for h in TABLE_HEADER:
        table.add_column(h, justify="right" if h not in ("day", "decision") else "left")
    for row in summary_rows(nights):
        table.add_row(*row)
    console.print(table)


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
    """(title, base64 PNG) pairs: reward curves of each night's PPO, per-component means, gold accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = report["nights"]
    out = []
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
    out.append(("Reward curves", _png(fig)))
    plt.close(fig)

    comps = sorted({c for n in nights for c in (n.get("components") or {})})
    if comps:
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
        out.append(("Per-component results (mean, 95 % CI)", _png(fig)))
        plt.close(fig)

    gold = [(n["night"], n.get("gold_accuracy") or {}) for n in nights]
    if any(g for _, g in gold):
        fig, ax = plt.subplots(figsize=(5, 3))
        labels = ["day-0 champion"] + [f"after night {k}" for k, _ in gold]
        first = gold[0][1].get("champion")
        values = [first] + [g.get("champion_after", g.get("candidate") if g.get("promoted") else g.get("champion"))
                            for _, g in gold]
        ax.bar(labels, [v if v is not None else 0 for v in values], color="#37a")
        ax.set_ylabel("gold accuracy on held-out prompts (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3, axis="y")
        out.append(("Champion accuracy against the generator's gold answers", _png(fig)))
        plt.close(fig)
    return out


def write_html(report: dict, path: Path) -> Path:
    """A self-contained HTML page: the summary table, gate decisions per night, and the plots (inline PNG)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in TABLE_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in summary_rows(report["nights"]))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rl-flywheel demo report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
        ".fail{color:#b00}.pass{color:#070}</style></head><body>",
        "<h1>rl-flywheel demo</h1>",
        f"<p>{esc(report.get('description', ''))}</p>",
        f"<table><tr>{head}</tr>{body}</table>",
    ]
    for n in report["nights"]:
        parts.append(f"<h3>Night {n['night']} ({esc(str(n.get('day', '')))}): gates</h3><ul>")
        for g in n.get("gates") or []:
            cls = "pass" if g.get("passed") else "fail"
            parts.append(f"<li class='{cls}'>{esc(str(g.get('name')))}: {esc(_fmt(g.get('value')))} "
                         f"({'pass' if g.get('passed') else 'fail'}) {esc(str(g.get('reason', '')))}</li>")
        parts.append("</ul>")
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
