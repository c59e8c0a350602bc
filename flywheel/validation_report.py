"""The validation report of one snapshot: JSON (for machines) and HTML (for people), side by side.

Both show the counts per failed check with a few example rows, the PII scrubbed, and every gate with its numbers.
"""
from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import orjson

from flywheel.records import Validation


def write_report(validation: Validation, examples: dict[str, list[dict]], snapshot_uri: str | Path) -> None:
    """Write ``validation.report_uri`` (JSON) and ``validation.report_html_uri`` (HTML).

    ``examples`` maps a check to a few quarantined rows (``source_object``, ``source_line``, ``request_id``, ``raw``).
    """
    report = {**validation.model_dump(), "snapshot_uri": str(snapshot_uri), "examples": examples,
              "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    path = Path(validation.report_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    Path(validation.report_html_uri).write_text(report_html(validation, examples, snapshot_uri))


def report_html(v: Validation, examples: dict[str, list[dict]], snapshot_uri: str | Path) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape

    def shown(example: dict) -> str:
        return e(f"{example['source_object']}:{example['source_line']} {example['raw'][:120]}")

    checks = "".join(f"<tr><td>{e(name)}</td><td>{n}</td>"
                     f"<td>{'<br>'.join(shown(x) for x in examples.get(name, []))}</td></tr>"
                     for name, n in v.checks.items())
    gates = "".join(f"<tr><td>{e(g.name)}</td><td>{'pass' if g.passed else '<b>FAIL</b>'}</td><td>{g.value}</td>"
                    f"<td>{g.threshold}</td><td>{e(g.message)}</td></tr>" for g in v.gates)
    pii_rows = "".join(f"<tr><td>{e(name)}</td><td>{n}</td></tr>" for name, n in v.pii.items())
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Validation {e(v.snapshot_hash[:16])}</title><style>body{{font-family:sans-serif;margin:2em}}
table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
td:nth-child(3){{font-family:monospace;font-size:90%}}</style></head><body>
<h1>Validation report: {e(v.contract)}</h1>
<p>Snapshot <code>{e(str(snapshot_uri))}</code> ({e(v.snapshot_hash[:16])})<br>
rows in <b>{v.rows_in}</b> = clean <b>{v.rows_clean}</b> + quarantined <b>{v.rows_quarantined}</b>
&nbsp;·&nbsp; {'all gates passed' if v.passed else '<b>a gate failed</b>'}</p>
<h2>Gates</h2><table><tr><th>gate</th><th>result</th><th>value</th><th>threshold</th><th>message</th></tr>{gates}</table>
<h2>Failed checks</h2><table><tr><th>reason</th><th>rows</th><th>examples (object:line raw)</th></tr>{checks}</table>
<h2>PII scrubbed from clean rows</h2><table><tr><th>pattern</th><th>matches</th></tr>{pii_rows}</table>
<p>Quarantine: <code>{e(v.quarantine_uri)}</code> · clean snapshot: <code>{e(v.clean_uri)}</code></p>
</body></html>"""
