"""Each built-in task's logs go through the real data plane (observe + validate): every recorded defect is
quarantined with its reason, PII is scrubbed, and the clean rows keep the feedback the task's users gave."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo import TASKS, get_task
from demo.logs import generate_logs, load_defects
from flywheel.config.data import SourceConfig, ValidateConfig
from tasks.observe import observe
from tasks.validate import validate


def ingest(logs: Path, state: Path):
    obs = observe(SourceConfig(uri=str(logs)), state)
    assert obs.new_data, obs.message
    return obs, validate(obs.snapshot_uri, state, ValidateConfig(), snapshot_hash=obs.snapshot_hash)


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_logs_are_accepted_and_defects_quarantined(name, fmt, tmp_path, state_dir):
    task = get_task(name)
    s = generate_logs(task, tmp_path / "logs", days=2, rows_per_day=300, seed=11, defect_rate=0.12,
                      start_date="2026-11-01", fmt=fmt)
    obs, val = ingest(tmp_path / "logs", state_dir)
    assert obs.rows == val.rows_in == s.rows == 600 and obs.objects_read == s.objects == 4  # _gold/ never read
    assert val.passed and val.rows_quarantined == s.quarantine_expected
    quarantined = {(q["source_object"], q["source_line"]): q
                   for q in map(json.loads, Path(val.quarantine_uri).read_text().splitlines())}
    defects = load_defects(tmp_path / "logs")
    assert {d["kind"] for d in defects} >= {"missing_field", "duplicate", "out_of_range", "oversized", "pii"}
    for d in defects:
        if d["expect"] == "quarantine":
            assert d["reason"] in quarantined[(d["object"], d["line"])]["reasons"], d
        else:
            assert (d["object"], d["line"]) not in quarantined, d
    assert sum(val.pii.values()) > 0
    clean = pq.read_table(val.clean_uri).to_pylist()
    assert {r["task"] for r in clean} == {name} and {r["model_version"] for r in clean} == {task.MODEL_VERSION}
    assert any(r["thumbs"] is not None for r in clean)
    if name == "it_helpdesk":
        assert all(r["resolved"] is None and r["escalated"] is None for r in clean)
        assert any(r["edited"] for r in clean)
