"""The evaluation report: ``report.json`` (report + decision), a self-contained ``report.html`` with plots, and
``responses.jsonl`` (every prompt with each role's answer).

Plots (matplotlib, Agg backend): per-component score distributions of candidate, champion and base; the
candidate - reference difference of each component with its 95 % CI; KL and length per role.

Texts written here (the examples, every prompt and answer of ``responses.jsonl``) go through ``flywheel.pii``
first: the snapshot's prompts are scrubbed already, but golden-set prompts (``evaluate.golden_set``) and generated
answers are not, and these files are logged to MLflow as artifacts.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from flywheel import pii
from flywheel.records import Check, Decision
from flywheel.stats import EvalReport

Scores = dict[str, dict[str, list[float]]]  # role -> component -> per-prompt score
Measures = dict[str, dict[str, list[float] | None]]  # role -> kl | entropy | length -> per-prompt value
COLORS = {"candidate": "#1f77b4", "champion": "#ff7f0e", "base": "#7f7f7f"}


def _png(fig) -> str:
    """The figure as a base64 PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _distributions_plot(plt, scores: Scores) -> str:
    """One histogram per component, the roles overlaid."""
    comps = list(scores["candidate"])
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps), 2.8), squeeze=False)
    for ax, comp in zip(axes[0], comps):
        data = [np.asarray(scores[r][comp], dtype=float) for r in scores]
        data = [d[~np.isnan(d)] for d in data]
        lo = min((d.min() for d in data if len(d)), default=0.0)
        hi = max((d.max() for d in data if len(d)), default=1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 16)
        for role, d in zip(scores, data):
            ax.hist(d, bins=bins, alpha=0.5, label=role, color=COLORS.get(role))
        if not any(len(d) for d in data):
            ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(comp, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("score distributions per component", y=1.04)
    return _png(fig)


def _differences_plot(plt, report: EvalReport) -> str:
    """candidate - reference per component, with its paired-bootstrap 95 % CI (green when the CI is above 0)."""
    diff = report.diff
    names = [c for c in diff if diff[c].mean is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 2.8))
    means = np.array([diff[c].mean for c in names])
    err = np.array([[diff[c].mean - diff[c].lo for c in names], [diff[c].hi - diff[c].mean for c in names]])
    ax.bar(names, means, yerr=err, capsize=4, color=["#2ca02c" if diff[c].lo > 0 else "#d62728" for c in names])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"candidate - {report.reference}")
    ax.set_title("mean difference with 95 % CI (paired bootstrap)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8, rotation=20)
    return _png(fig)


def _kl_length_plot(plt, roles: list[str], measures: Measures) -> str | None:
    """Box plots of KL to base and response length per role; None when neither was measured."""
    keys = [k for k in ("kl", "length") if any(measures.get(r, {}).get(k) for r in roles)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        measured = [r for r in roles if measures.get(r, {}).get(k)]
        ax.boxplot([measures[r][k] for r in measured], tick_labels=measured)
        ax.set_title({"kl": "KL to base (nats / sequence)", "length": "response length (tokens)"}[k], fontsize=9)
    return _png(fig)


def _plots(report: EvalReport, scores: Scores, measures: Measures) -> dict[str, str]:
    """Name -> base64 PNG of each plot of the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {"distributions": _distributions_plot(plt, scores), "differences": _differences_plot(plt, report)}
    kl_length = _kl_length_plot(plt, list(scores), measures)
    if kl_length is not None:
        out["kl_length"] = kl_length
    return out


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _table(report: EvalReport) -> str:
    roles = list(report.roles)
    comps = list(report.roles["candidate"].components)
    head = "".join(f"<th>{html.escape(r)}</th>" for r in roles) + f"<th>candidate − {report.reference}</th>"
    rows = []

    def cell(e):
        return "<td>–</td>" if e is None or e.mean is None else f"<td>{e.mean:.4f} [{e.lo:.4f}, {e.hi:.4f}]</td>"

    for c in comps:
        kind = report.kinds.get(c, "")
        cells = "".join(cell(report.roles[r].components.get(c)) for r in roles) + cell(report.diff.get(c))
        rows.append(f"<tr><td>{html.escape(c)} <small>{kind}</small></td>{cells}</tr>")
    for c in report.roles["candidate"].pass_rates:
        rows.append(f"<tr><td>pass rate: {html.escape(c)}</td>"
                    + "".join(cell(report.roles[r].pass_rates.get(c)) for r in roles) + "<td></td></tr>")
    for k in ("kl", "entropy", "length"):
        rows.append(f"<tr><td>{k}</td>" + "".join(cell(getattr(report.roles[r], k)) for r in roles) + "<td></td></tr>")
    return f"<table><tr><th>metric (mean [95% CI])</th>{head}</tr>{''.join(rows)}</table>"


def _checks(title: str, checks: list[Check]) -> str:
    rows = "".join(
        f"<tr class={'ok' if c.passed else 'bad'}><td>{html.escape(c.name)}</td><td>{_fmt(c.value)}</td>"
        f"<td>{_fmt(c.threshold)}</td><td>{'pass' if c.passed else 'FAIL'}</td><td>{html.escape(c.reason)}</td></tr>"
        for c in checks)
    head = "<tr><th>name</th><th>value</th><th>threshold</th><th></th><th>reason</th></tr>"
    return f"<h2>{title}</h2><table>{head}{rows}</table>"


def render_html(report: EvalReport, decision: Decision, plots: dict[str, str]) -> str:
    verdict = "PROMOTABLE" if decision.passed else "REJECTED"
    imgs = "".join(f'<h3>{k}</h3><img src="data:image/png;base64,{v}">' for k, v in plots.items())
    examples = "".join(
        "<tr>" + "".join(f"<td><pre>{html.escape(json.dumps(ex[k]) if k == 'prompt' else str(ex[k]))}</pre></td>"
                         for k in ex) + "</tr>" for ex in report.examples)
    ex_head = "".join(f"<th>{k}</th>" for k in (report.examples[0] if report.examples else {}))
    champ = f"champion v{report.champion_version}" if report.champion_version else "no champion (compared with base)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>rl-flywheel evaluation</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;vertical-align:top}} .ok td{{background:#eaffea}}
.bad td{{background:#ffecec}} pre{{white-space:pre-wrap;margin:0;max-width:320px}}</style></head><body>
<h1>Evaluation: {verdict}</h1><p>{html.escape(decision.reason)}</p>
<p>{report.n_prompts} held-out prompts; reference: {champ}.</p>
{_checks("Gates", decision.gates)}{_checks("Reward-hacking monitors", report.monitors)}
<h2>Metrics</h2>{_table(report)}<h2>Plots</h2>{imgs}
<h2>Examples</h2><table><tr>{ex_head}</tr>{examples}</table></body></html>"""


def write_report(report: EvalReport, decision: Decision, scores: Scores, measures: Measures,
                 out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` (plots embedded, also saved as PNG files) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = report.model_copy(update={"examples": pii.scrub_json(report.examples)})
    json_path = out / "report.json"
    json_path.write_text(json.dumps({"report": report.model_dump(mode="json"),
                                     "decision": decision.model_dump(mode="json")}, indent=2))
    plots = _plots(report, scores, measures)
    for name, b64 in plots.items():
        (out / f"{name}.png").write_bytes(base64.b64decode(b64))
    html_path = out / "report.html"
    html_path.write_text(render_html(report, decision, plots))
    return json_path, html_path


def write_responses(out_dir: str | Path, prompts: list[list[dict]], sources: list[str],
                    responses: dict[str, list[str]]) -> Path:
    """``responses.jsonl``: one line per prompt with its source (logs | golden) and every role's answer (PII
    scrubbed)."""
    path = Path(out_dir) / "responses.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts, responses = pii.scrub_json(prompts), pii.scrub_json(responses)
    path.write_text("".join(
        json.dumps({"prompt": p, "source": s, **{r: answers[i] for r, answers in responses.items()}}) + "\n"
        for i, (p, s) in enumerate(zip(prompts, sources))))
    return path
