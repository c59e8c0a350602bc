"""A night's ingest (observe in parts -> validate -> commit) on a local Dask cluster of 2 worker processes
(prefect-dask's DaskTaskRunner, the flow unchanged) gives the same raw snapshot, clean snapshot, quarantine and
manifest as the default runner, and its parts are read by both workers. Prefect's test harness; real GX."""
import json
from pathlib import Path

import pyarrow.parquet as pq

DAY = "2026-11-05"


def _run(ingest, logs, state, **options):
    flow = ingest.with_options(**options) if options else ingest
    clean = flow(day=DAY, overrides={"project.state_dir": str(state), "source.uri": str(logs),
                                     "source.part_bytes": 1})  # one part per object
    observation = json.loads((state / "nights" / f"ingest-{DAY}.observation.json").read_text())
    manifest = json.loads(next((state / "manifest").glob("*.json")).read_text())["objects"]
    return clean, observation, manifest


def test_ingest_on_a_dask_cluster_matches_the_default_runner(prefect_harness, tmp_path):
    from prefect_dask import DaskTaskRunner

    from demo import get_task
    from demo.logs import generate_logs
    from flows.ingest import ingest

    logs = tmp_path / "logs"
    summary = generate_logs(get_task("support_triage"), logs, days=3, rows_per_day=1500, seed=3, defect_rate=0.05,
                            start_date="2026-11-01", fmt="jsonl")
    assert summary.objects >= 3
    alone, seen_alone, manifest_alone = _run(ingest, logs, tmp_path / "alone")
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                            "dashboard_address": None})
    spread, seen_spread, manifest_spread = _run(ingest, logs, tmp_path / "dask", task_runner=runner)

    assert seen_alone["parts"] == seen_spread["parts"] == summary.objects
    assert seen_alone["part_workers"] == 1 and seen_spread["part_workers"] == 2, seen_spread
    assert spread.snapshot_hash == alone.snapshot_hash
    assert (spread.rows_in, spread.rows_clean, spread.rows_quarantined) == (
        alone.rows_in, alone.rows_clean, alone.rows_quarantined) == (summary.rows, spread.rows_clean,
                                                                       spread.rows_quarantined)
    assert alone.rows_quarantined > 0
    assert pq.read_table(seen_spread["snapshot_uri"]).equals(pq.read_table(seen_alone["snapshot_uri"]))
    assert pq.read_table(spread.clean_uri).equals(pq.read_table(alone.clean_uri))
    quarantined = [{k: v for k, v in json.loads(x).items() if k != "quarantined_at"}
                   for uri in (alone.quarantine_uri, spread.quarantine_uri) for x in Path(uri).read_text().splitlines()]
    assert quarantined[:len(quarantined) // 2] == quarantined[len(quarantined) // 2:]
    assert {k: v["etag"] for k, v in manifest_spread.items()} == {k: v["etag"] for k, v in manifest_alone.items()}
    assert not list((tmp_path / "dask").rglob(".part-*")), "part files left behind"
