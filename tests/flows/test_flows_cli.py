"""The flow area's CLI and report writer: fast checks, no flow run."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from demo import report as demo_report
from flywheel.cli import app


def _night(k: int, promoted: bool) -> dict:
    return {"night": k, "day": f"2026-01-0{k}", "rows_in": 100, "rows_clean": 95, "rows_quarantined": 5,
            "champion_reward": 1.2, "candidate_reward": 1.5, "candidate_ci": [1.4, 1.6], "promoted": promoted,
            "champion_version": str(k + 1 if promoted else k), "reward_curve": [0.1, 0.5, 0.9],
            "gates": [{"name": "gain_ci_low", "value": 0.1, "passed": promoted, "reason": "why"}],
            "components": {"format": {"candidate": {"mean": 0.9, "ci": [0.8, 1.0]},
                                      "champion": {"mean": 0.7, "ci": [0.6, 0.8]}}},
            "gold_accuracy": {"champion": 60.0, "candidate": 80.0, "promoted": promoted}}


def test_flows_cli_lists_the_flow_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "run", "bootstrap", "schedule", "ui"):
        assert command in result.output


def test_flows_cli_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  cron: '0 2 * * *'\n  timezon: UTC\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 1
    assert "schedule.timezon" in result.output


def test_flows_report_json_and_html(tmp_path):
    report = {"description": "d", "nights": [_night(1, True), _night(2, False)], "timing": {"total_s": 12.0}}
    demo_report.write_json(report, tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [n["promoted"] for n in saved["nights"]] == [True, False]
    html = demo_report.write_html(report, tmp_path / "report.html").read_text()
    assert html.count("<img") == 3  # reward curves, per-component bars, gold accuracy
    assert "kept champion" in html and "promoted" in html
    rows = demo_report.summary_rows(report["nights"])
    assert rows[0][7] == "[1.40, 1.60]"


def test_flows_report_refuses_counts_that_do_not_add_up(tmp_path):
    night = _night(1, True) | {"rows_quarantined": 4}
    with pytest.raises(ValueError, match="rows_in != rows_clean"):
        demo_report.write_json({"nights": [night]}, tmp_path / "r.json")
    with pytest.raises(ValueError, match="missing keys"):
        demo_report.write_json({"nights": [{"night": 1}]}, tmp_path / "r.json")


def test_paired_gain_ci_brackets_the_gain_and_rejects_unpaired_lists():
    import pytest

    from demo.gold import paired_gain_ci

    a = [True] * 70 + [False] * 30
    b = [True] * 70 + [True] * 15 + [False] * 15  # +15 points on the same prompts
    low, high = paired_gain_ci(a, b)
    assert 5 < low < 15 < high < 25
    assert paired_gain_ci(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal"):
        paired_gain_ci(a, b[:-1])
