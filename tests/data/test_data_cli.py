"""`flywheel demo-data` then `flywheel ingest --json`: counts add up, rerun says no new data, gate failure exits 1."""
import json

from typer.testing import CliRunner

from flywheel.cli import app

runner = CliRunner()


def test_demo_data_then_ingest(tmp_path):
    logs, state = tmp_path / "logs", tmp_path / "state"
    res = runner.invoke(app, ["demo-data", "--out", str(logs), "--days", "2", "--rows-per-day", "500", "--seed", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    made = json.loads(res.output)
    res = runner.invoke(app, ["ingest", "--source", str(logs), "--state", str(state), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["rows_in"] == made["rows"] == 1000
    assert out["rows_in"] == out["rows_clean"] + out["rows_quarantined"]
    assert out["rows_quarantined"] == made["quarantine_expected"]
    for key in ("snapshot_uri", "quarantine_uri", "report_uri", "snapshot_hash"):
        assert out[key]
    res = runner.invoke(app, ["ingest", "--source", str(logs), "--state", str(state), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["new_data"] is False


def test_ingest_gate_failure_and_bad_source(tmp_path):
    logs, state = tmp_path / "logs", tmp_path / "state"
    runner.invoke(app, ["demo-data", "--out", str(logs), "--days", "1", "--rows-per-day", "300",
                        "--defect-rate", "0.3"])
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("validate:\n  gates:\n    max_quarantine_fraction: 0.05\n")
    res = runner.invoke(app, ["ingest", "-c", str(cfg), "--source", str(logs), "--state", str(state)])
    assert res.exit_code == 1 and "gate max_quarantine_fraction" in res.output
    res = runner.invoke(app, ["ingest", "--source", str(tmp_path / "nope"), "--state", str(state)])
    assert res.exit_code == 1 and "nope" in res.output and "Traceback" not in res.output
