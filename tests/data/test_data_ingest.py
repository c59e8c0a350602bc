"""observe + validate on a local folder: every defect quarantined with its reason, incremental reruns, gates."""
import gzip
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo.support_triage import generate_logs, load_defects
from flywheel.config.data import GatesConfig, PiiConfig, SourceConfig, ValidateConfig
from tasks.observe import commit_manifest, observe
from tasks.validate import GateFailed, validate


def ingest(logs, state, cfg=None):
    obs = observe(SourceConfig(uri=str(logs)), state)
    assert obs.new_data, obs.message
    val = validate(obs.snapshot_uri, state, cfg or ValidateConfig(), snapshot_hash=obs.snapshot_hash)
    commit_manifest(obs, state)
    return obs, val


def quarantine(val):
    return [json.loads(line) for line in Path(val.quarantine_uri).read_text().splitlines()]


def test_every_defect_is_quarantined_with_its_reason(demo_logs, state_dir):
    logs, summary = demo_logs
    obs, val = ingest(logs, state_dir)
    assert obs.rows == val.rows_in == summary.rows == 1200
    assert val.rows_in == val.rows_clean + val.rows_quarantined
    defects = load_defects(logs)
    assert {x["kind"] for x in defects} == {"malformed", "missing_field", "wrong_type", "duplicate", "out_of_range",
                                            "oversized", "pii"}
    records = {(q["source_object"], q["source_line"]): q for q in quarantine(val)}
    expected = [x for x in defects if x["expect"] == "quarantine"]
    for x in expected:
        rec = records.get((x["object"], x["line"]))
        assert rec is not None, f"defect not quarantined: {x}"
        assert x["reason"] in rec["reasons"], (x, rec["reasons"])
        assert rec["raw"]
    assert len(records) == val.rows_quarantined == len(expected)      # and nothing clean was quarantined
    assert {r for x in expected for r in [x["reason"].split(":")[0]]} >= {"malformed_json", "invalid_utf8", "missing",
                                                                          "type", "duplicate", "range", "length"}


def test_clean_snapshot_has_the_schema_and_no_pii(demo_logs, state_dir):
    logs, _ = demo_logs
    _, val = ingest(logs, state_dir, ValidateConfig(pii=PiiConfig(extra_patterns={"order_ref": r"ORD-\d{4}"})))
    clean = pq.read_table(val.clean_uri)
    from flywheel.schema import SNAPSHOT_COLUMNS
    assert clean.column_names == SNAPSHOT_COLUMNS and clean.num_rows == val.rows_clean
    pii_rows = [x for x in load_defects(logs) if x["expect"] == "scrub"]
    assert sum(val.pii.values()) >= len(pii_rows) > 0
    text = " ".join(str(v) for c in ("messages", "comment") for v in clean[c].to_pylist())
    assert "@example.com" not in text and "4111 1111" not in text and "[EMAIL]" in text
    assert "order_ref" in val.pii
    report = json.loads(Path(val.report_uri).read_text())
    assert report["rows_in"] == val.rows_in and report["examples"]
    assert "interaction_log_v1" in Path(val.report_html_uri).read_text()


def test_rerun_reads_nothing_twice_and_new_objects_in_old_partitions_are_read(logs_copy, state_dir):
    obs, _ = ingest(logs_copy, state_dir)
    again = observe(SourceConfig(uri=str(logs_copy)), state_dir)
    assert not again.new_data and again.objects_skipped == obs.objects_read and "no new data" in again.message
    late = logs_copy / "dt=2026-11-01" / "part-late.jsonl"
    generate_logs(logs_copy.parent / "more", days=1, rows_per_day=50, seed=9, defect_rate=0.0,
                  start_date="2026-11-01", fmt="jsonl", parts_per_day=1)
    shutil.copy(logs_copy.parent / "more" / "dt=2026-11-01" / "part-00000.jsonl", late)
    third, val = ingest(logs_copy, state_dir)
    assert third.objects_read == 1 and third.rows == 50 and third.partitions == ["2026-11-01"]
    assert val.rows_clean == 50


def test_gate_failure_names_the_gate_and_leaves_objects_unprocessed(demo_logs, state_dir):
    logs, _ = demo_logs
    obs = observe(SourceConfig(uri=str(logs)), state_dir)
    strict = ValidateConfig(gates=GatesConfig(max_quarantine_fraction=0.02))
    with pytest.raises(GateFailed) as err:
        validate(obs.snapshot_uri, state_dir, strict, snapshot_hash=obs.snapshot_hash)
    message = str(err.value)
    assert "max_quarantine_fraction" in message and "of 1200 rows quarantined" in message and "> max 2.00%" in message
    assert err.value.validation.rows_quarantined > 0 and not err.value.validation.passed
    assert observe(SourceConfig(uri=str(logs)), state_dir).new_data      # not committed: read again after a fix
    with pytest.raises(GateFailed, match="min_rows: 1200 rows in, need at least 5000"):
        validate(obs.snapshot_uri, state_dir, ValidateConfig(gates=GatesConfig(min_rows=5000)))


def test_unreadable_object_is_quarantined_whole(logs_copy, state_dir):
    bad = logs_copy / "dt=2026-11-02" / "part-broken.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"request_id": "x"}\n' * 10)[:-12])           # truncated gzip
    (logs_copy / "notes.txt").write_text("not a log")                               # ignored, counted
    obs = observe(SourceConfig(uri=str(logs_copy)), state_dir, commit=True)
    assert obs.objects_quarantined == 1 and obs.objects_ignored == 1 and obs.objects_read == 4
    rec = json.loads(Path(obs.object_quarantine_uri).read_text().splitlines()[0])
    assert rec["source_object"] == "dt=2026-11-02/part-broken.jsonl.gz" and "unreadable_object" in rec["reason"]
    assert not observe(SourceConfig(uri=str(logs_copy)), state_dir).new_data       # not retried forever


def test_parquet_source(tmp_path, state_dir):
    s = generate_logs(tmp_path / "pq", days=1, rows_per_day=400, seed=2, defect_rate=0.1, start_date="2026-11-01",
                      fmt="parquet")
    obs, val = ingest(tmp_path / "pq", state_dir)
    assert obs.rows == 400 and val.rows_quarantined == s.quarantine_expected
    records = {(q["source_object"], q["source_line"]): q for q in quarantine(val)}
    for x in load_defects(tmp_path / "pq"):
        if x["expect"] == "quarantine":
            assert x["reason"] in records[(x["object"], x["line"])]["reasons"]


def test_parallel_parse_gives_the_same_snapshot(demo_logs, tmp_path):
    logs, _ = demo_logs
    one = observe(SourceConfig(uri=str(logs)), tmp_path / "one")
    two = observe(SourceConfig(uri=str(logs), parse_workers=2, parallel_min_bytes=0), tmp_path / "two")
    assert "parse_cpu" in two.seconds and one.snapshot_hash == two.snapshot_hash
    assert pq.read_table(one.snapshot_uri).equals(pq.read_table(two.snapshot_uri))


def test_ingest_leaves_nothing_in_the_temp_folder(demo_logs, state_dir, tmp_path, monkeypatch):
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))             # GX's ephemeral context has no docs site
    ingest(demo_logs[0], state_dir)
    assert list(tmp.iterdir()) == []


def test_config_limits_default_to_the_contracts_own():
    from data_contracts.interaction_log_v1 import build_suite
    from data_contracts.limits import Limits
    from flywheel.config.data import LimitsConfig

    assert LimitsConfig().contract_limits() == Limits()
    tight = LimitsConfig(max_messages=3).contract_limits()
    assert tight == Limits(max_messages=3)
    bounds = {e.meta["check"]: e for e in build_suite(tight, now="2026-11-26T00:00:00+00:00").expectations}
    assert bounds["range:messages"].max_value == 3
