"""The night's summary lists the canary decisions taken since the previous night: the live monitor's (through a
real MLflow registry on SQLite), the registry's own canary tags (a canary superseded by a newer release), each
night only its own window, and a rerun of a night the same window."""
from __future__ import annotations

from test_gateway_routing import monitor_for, registry, run_canary  # noqa: F401  (registry: a fixture)

from flows.continuous_improvement import NightRecord, summary_markdown
from flywheel.gateway.decisions import canary_summary, night_window, table_rows


def test_each_night_shows_the_canary_decisions_since_the_previous_one(registry):  # noqa: F811
    cfg = registry.cfg
    first = canary_summary(cfg, "2026-12-01")
    assert first.since is None and first.entries == [] and first.status == "no canary running"

    registry.challenger()  # v2, worse: the live monitor rolls it back
    monitor = monitor_for(registry)
    decision, _ = run_canary(monitor, 0.7, 0.45, seed=1)
    assert decision.applied == "rolled_back"
    registry.challenger()  # v3, still collecting when the night looks
    second = canary_summary(cfg, "2026-12-02")
    assert second.since == first.until
    applied = [(e.challenger_version, e.decision, e.applied, e.source) for e in second.entries]
    assert (2, "rollback", "rolled_back", "live") in applied, applied
    rollback = next(e for e in second.entries if e.applied == "rolled_back")
    assert rollback.labelled["challenger"] >= 50 and rollback.msprt_lambda >= 20
    assert "significantly worse" in rollback.reason
    assert second.status == "canary running: challenger v3 vs champion v1"
    assert sum(e.source == "registry" for e in second.entries) == 0  # the monitor's tag is the same decision

    # night 3: v3 superseded by a canary release (a registry tag only), v4 promoted by the monitor
    registry.release_mode = "canary"
    registry.challenger = lambda: registry.release(_adapter(registry, "v4"), passed=True, reason="gates passed",
                                                   evaluated_champion=1, lineage=None)
    release = registry.challenger()
    assert release.decision == "canary" and registry.tags(3)["canary_decision"] == "superseded"
    decision, _ = run_canary(monitor, 0.45, 0.7, seed=2)
    assert decision.applied == "promoted"
    third = canary_summary(cfg, "2026-12-03")
    got = [(e.challenger_version, e.applied, e.source) for e in third.entries]
    assert (3, "superseded", "registry") in got and (4, "promoted", "live") in got, got
    assert all(e.challenger_version != 2 for e in third.entries), "night 2's decision shown again"
    assert third.status == "no canary running" and third.champion_version == 4

    rerun = canary_summary(cfg, "2026-12-03")  # the same night again: the same window start
    assert rerun.since == third.since and [e.at for e in rerun.entries] == [e.at for e in third.entries]
    assert night_window(cfg.state, "2026-12-04")[0] == rerun.until

    markdown = summary_markdown(NightRecord(day="2026-12-03", status="skipped", canary=third.model_dump(mode="json")))
    assert f"## Canary (since {third.since})" in markdown and "no canary running" in markdown
    assert "| v4 | v1 | promote | promoted |" in markdown and "superseded" in markdown
    assert {r["applied"] for r in table_rows(third)} >= {"promoted", "superseded"}


def _adapter(reg, name):
    from test_gateway_routing import fake_adapter

    return fake_adapter(reg.state_dir.parent / f"adapter-{name}")


def test_a_night_without_registry_or_decisions_says_so(make_cfg):
    cfg = make_cfg("http://127.0.0.1:9/v1")
    summary = canary_summary(cfg, "2026-12-01")
    assert summary.entries == [] and summary.error is None
    markdown = summary_markdown(NightRecord(day="2026-12-01", status="skipped", canary=summary.model_dump()))
    assert "## Canary (so far)" in markdown and "No canary decisions in this window." in markdown
