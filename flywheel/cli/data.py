"""CLI commands of the data plane: ``flywheel demo-data`` and ``flywheel ingest`` (observe + validate)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from flywheel.cli.app import app


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(..., "--out",
                             help="Folder to write dt=YYYY-MM-DD/ partitions (+ _gold/, _defects/) into."),
    days: int = typer.Option(3, "--days", min=1, help="Number of daily partitions."),
    rows_per_day: int = typer.Option(1000, "--rows-per-day", min=1, help="Log lines per day (defects included)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    defect_rate: float = typer.Option(0.05, "--defect-rate", min=0.0, max=1.0, help="Share of defective lines."),
    start_date: str = typer.Option(None, "--start-date", help="First day YYYY-MM-DD (default: DAYS days ago)."),
    fmt: str = typer.Option("jsonl.gz", "--format", help="jsonl, jsonl.gz or parquet."),
    task: str = typer.Option("support_triage", "--task", help="Built-in demo task: support_triage or it_helpdesk."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write realistic production logs of a built-in task (noisy feedback, systematic model errors, defects)."""
    from demo import get_task
    from demo.logs import generate_logs

    try:
        summary = generate_logs(get_task(task), out, days=days, rows_per_day=rows_per_day, seed=seed,
                                defect_rate=defect_rate, start_date=start_date, fmt=fmt)
    except ValueError as e:
        _fail(f"demo-data: {e}")
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo(f"wrote {summary.rows} log lines in {summary.objects} objects under {out} "
               f"({', '.join(summary.days)})")
    typer.echo(f"defects: {summary.defects} ({summary.quarantine_expected} to quarantine, the rest is PII to scrub)")
    typer.echo(f"production model accuracy (gold): {summary.logged_accuracy:.1%}  by kind: "
               + ", ".join(f"{k} {v:.0%}" for k, v in summary.accuracy_by_kind.items()))


def run_ingest(config: Path | None, source: str | None, state: Path | None, progress: bool = False) -> dict:
    """observe + validate + commit; returns the summary dict (raises ConfigError, GateFailed, OSError...)."""
    from flywheel.config import load_config
    from tasks.observe import commit_manifest, observe
    from tasks.validate import validate

    cfg = load_config(config, overrides={"source.uri": source, "project.state_dir": str(state) if state else None})
    obs = observe(cfg.source, cfg.state, commit=False, progress=progress)
    summary = {"new_data": obs.new_data, "message": obs.message, "source_uri": obs.source_uri,
               "objects_read": obs.objects_read, "objects_skipped": obs.objects_skipped,
               "objects_quarantined": obs.objects_quarantined, "object_quarantine_uri": obs.object_quarantine_uri,
               "rows_in": obs.rows, "rows_clean": 0, "rows_quarantined": 0, "snapshot_uri": None,
               "raw_snapshot_uri": obs.snapshot_uri, "quarantine_uri": None, "report_uri": None,
               "snapshot_hash": obs.snapshot_hash, "seconds": {"observe": obs.seconds}}
    if not obs.new_data:
        return summary
    v = validate(obs.snapshot_uri, cfg.state, cfg.validation, snapshot_hash=obs.snapshot_hash)
    commit_manifest(obs, cfg.state)
    summary.update(rows_in=v.rows_in, rows_clean=v.rows_clean, rows_quarantined=v.rows_quarantined,
                   snapshot_uri=v.clean_uri, quarantine_uri=v.quarantine_uri, report_uri=v.report_uri,
                   report_html_uri=v.report_html_uri, checks=v.checks, pii=v.pii,
                   gates=[g.model_dump() for g in v.gates])
    summary["seconds"]["validate"] = v.seconds
    return summary


@app.command("ingest")
def ingest(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (omitted: embedded defaults)."),
    source: str = typer.Option(None, "--source", help="Overrides source.uri: a folder or s3://bucket/prefix."),
    state: Path = typer.Option(None, "--state", help="Overrides project.state_dir."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Observe new logs and validate them: clean snapshot, quarantine with reasons, report."""
    from flywheel.config import ConfigError
    from flywheel.pii import PiiPatternError
    from tasks.validate import ContractError, GateFailed

    try:
        summary = run_ingest(config, source, state, progress=not as_json)
    except (ConfigError, ContractError, PiiPatternError, FileNotFoundError) as e:
        _fail(f"ingest: {e}")
    except GateFailed as e:
        if as_json:
            typer.echo(json.dumps({"error": str(e), **e.validation.model_dump()}, indent=2))
        _fail(f"ingest: {e}\n  report: {e.validation.report_html_uri}\n  quarantine: {e.validation.quarantine_uri}"
              "\n  (the objects stay unprocessed: fix the data or the gate and rerun)")
    except Exception as e:
        if type(e).__module__.startswith(("botocore", "boto3")):
            _fail(f"ingest: cannot read {source or 'source.uri'}: {type(e).__name__}: {e}")
        raise
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    if not summary["new_data"]:
        typer.echo(summary["message"])
        return
    typer.echo(f"rows in {summary['rows_in']} = clean {summary['rows_clean']} + quarantined "
               f"{summary['rows_quarantined']}   (objects read {summary['objects_read']}, "
               f"unreadable {summary['objects_quarantined']})")
    for key in ("snapshot_uri", "quarantine_uri", "report_uri", "object_quarantine_uri"):
        if summary.get(key):
            typer.echo(f"{key:16} {summary[key]}")
    typer.echo(f"snapshot_hash    {summary['snapshot_hash']}")
    if summary.get("pii"):
        typer.echo("pii scrubbed     " + ", ".join(f"{k} {n}" for k, n in summary["pii"].items()))
