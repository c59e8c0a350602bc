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


def test_flows_report_html_lists_the_canary_decisions(tmp_path):
    from flywheel.gateway.decisions import CanaryEntry, CanarySummary

    entry = CanaryEntry(at="2026-11-26T10:00:00.000Z", source="live", challenger_version=3, champion_version=2,
                        decision="rollback", applied="rolled_back", reason="challenger worse on resolved (mSPRT)")
    canary = CanarySummary(since=None, until="2026-11-26T12:00:00Z", entries=[entry], champion_version=2)
    report = {"description": "d", "nights": [_night(1, True) | {"canary": canary.model_dump(mode="json")},
                                            _night(2, False)]}
    html = demo_report.write_html(report, tmp_path / "report.html").read_text()
    assert html.count("Canary decisions") == 1  # night 2 has none: no empty table
    assert "rolled_back" in html and "v3" in html and "challenger worse on resolved" in html


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


def _full_report() -> dict:
    """A report as the demo writes it now: the day-0 champion's gold on the yardstick, the per-night champion after
    the decision, per-kind numbers, production's own accuracy on the yardstick, timing."""
    n1, n2 = _night(1, True), _night(2, False)
    n1 |= {"gain_ci": [0.05, 0.2], "decision": "promoted"}
    n2 |= {"gain_ci": [-0.1, 0.05], "decision": "kept",
           "gates": [{"name": "total_gain", "value": -0.1, "passed": False, "reason": "lower bound <= 0"},
                     {"name": "kl", "value": 0.01, "passed": True, "reason": "ok"}]}
    for n, after in ((n1, 80.0), (n2, 80.0)):
        n["gold_accuracy"] |= {"champion_after": after, "champion_after_ci": [72.0, 86.0], "candidate_yardstick": 78.0,
                               "candidate_yardstick_ci": [70.0, 84.0],
                               "per_kind": {"champion": {"a": 90.0, "b": 10.0}, "candidate": {"a": 90.0, "b": 60.0},
                                            "champion_after": {"a": 90.0, "b": 60.0}}}
    return {"description": "d", "nights": [n1, n2],
            "bootstrap": {"champion_version": "1",
                          "gold_accuracy": {"accuracy": 55.0, "ci": [47.0, 63.0], "n": 100,
                                            "per_kind": {"a": 88.0, "b": 5.0}}},
            "gold_yardstick": {"day": "2026-01-03", "n": 100,
                               "production": {"accuracy": 50.0, "ci": [40.0, 60.0], "per_kind": {"a": 92.0, "b": 8.0}}},
            "timing": {"total_s": 300.0, "prefect_overhead_share": 0.05}}


def test_flows_report_shows_the_champion_path_per_kind_and_why(tmp_path):
    report = _full_report()
    path = demo_report.champion_path(report)
    assert [p["label"] for p in path] == ["day 0", "night 1", "night 2"]
    assert [p["accuracy"] for p in path] == [55.0, 80.0, 80.0]
    assert path[0]["ci"] == [47.0, 63.0] and path[1]["per_kind"] == {"a": 90.0, "b": 60.0}
    assert path[2]["candidate"] == 78.0 and path[2]["promoted"] is False  # night 2's rejected candidate, same prompts
    rows = demo_report.summary_rows(report["nights"])
    assert rows[0][7] == "[1.40, 1.60]"
    assert rows[0][-1] == "all gates passed; gain CI [+0.0500, +0.2000]"
    assert rows[1][-1] == "failed total_gain -0.1000"  # the failed gate by name, not the passing one
    report["goals"] = demo_report.goal_checks(report)
    goals = {g["name"]: g for g in report["goals"]}
    assert goals["day-0 champion imitates production"]["met"] is True  # a: 92 vs 88; b is not a kind production gets
    assert goals["night 1 promotes a better candidate"]["met"] is True
    assert goals["champion gold +15 points by the last night"]["met"] is True
    assert "+25.0 points" in goals["champion gold +15 points by the last night"]["detail"]
    assert goals["wall time <= 600 s"]["met"] and goals["Prefect overhead <= 10 %"]["met"]
    html = demo_report.write_html(report, tmp_path / "report.html").read_text()
    assert html.count("<img") == 4  # reward curves, per-component bars, champion path with CIs, per kind
    assert "per kind" in html and "Goals" in html and "not met" not in html


def test_flows_report_goals_say_why_not():
    report = _full_report()
    report["nights"][0] |= {"promoted": False, "decision": "kept", "gain_ci": [-0.02, 0.1],
                            "gates": [{"name": "gain_ci_low", "value": -0.02, "passed": False, "reason": "why"}]}
    report["nights"][0]["gold_accuracy"] |= {"champion_after": 55.0}
    report["nights"][1]["gold_accuracy"] |= {"champion_after": 60.0}
    report["timing"]["prefect_overhead_share"] = 0.2
    goals = {g["name"]: g for g in demo_report.goal_checks(report)}
    assert goals["night 1 promotes a better candidate"]["met"] is False
    assert "CI low -0.0200" in goals["night 1 promotes a better candidate"]["detail"]
    assert "failed gain_ci_low" in goals["night 1 promotes a better candidate"]["detail"]  # the gate that failed
    assert goals["champion gold +15 points by the last night"]["met"] is False
    assert "+5.0 points" in goals["champion gold +15 points by the last night"]["detail"]
    assert goals["Prefect overhead <= 10 %"]["met"] is False


def test_flows_report_terminal_summary_prints_path_and_goals():
    from rich.console import Console

    report = _full_report()
    report["goals"] = demo_report.goal_checks(report)
    console = Console(width=200, record=True)
    demo_report.print_summary(report["nights"], console, report)
    text = console.export_text()
    assert "kept champion" in text and "failed total_gain" in text
    assert "day 0 55.0 %" in text and "night 2 80.0 %" in text
    assert "goal champion gold +15 points by the last night: met" in text
