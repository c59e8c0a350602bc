"""validate streams the snapshot in row batches: the same verdict whatever the batch sizes, and duplicates found
across batches in log order, exactly (hash collisions included)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from test_data_fastpath import corrupted_log, ingest

from flywheel import row_index
from tasks import validate as validate_stage


def test_small_batches_give_the_same_verdict_as_one_batch(tmp_path, monkeypatch):
    """The corrupted demo log (repeated lines among its defects) in one batch, then in batches of 37 check rows and
    29 key rows: the same clean rows, quarantine records, check and PII counts."""
    logs = corrupted_log(tmp_path)
    one_val, one_clean, one_q, _ = ingest(logs, tmp_path / "one")
    monkeypatch.setattr(validate_stage, "CHECK_BATCH_ROWS", 37)
    monkeypatch.setattr(row_index, "KEY_BATCH_ROWS", 29)
    val, clean, q, _ = ingest(logs, tmp_path / "small")
    assert one_val.rows_in > 10 * 37 and one_val.checks.get("duplicate:request_id", 0) >= 5
    assert val.checks == one_val.checks and val.pii == one_val.pii
    assert clean == one_clean
    assert q == one_q


def _snapshot(path, rows: list[tuple[str | None, str, int]]) -> str:
    """A snapshot with the key columns only: (request_id, source_object, source_line) per row, in snapshot order."""
    ids, objects, lines = zip(*rows)
    table = pa.table({"request_id": pa.array(ids, pa.string()),
                      "timestamp": pa.array([1_700_000_000_000_000] * len(rows), pa.timestamp("us", tz="UTC")),
                      "source_object": pa.array(objects), "source_line": pa.array(lines, pa.int64())})
    pq.write_table(table, path, row_group_size=2)
    return str(path)


ROWS = [("b", "o1", 5),     # 0: the second "b" of o1 in log order (line 2 comes first)
        ("a", "o1", 1),     # 1: first "a"
        ("b", "o1", 2),     # 2: first "b": clean although later in the snapshot
        (None, "o1", 3),    # 3: no id: never a duplicate
        ("a", "o2", 1),     # 4: "a" again in the next object
        (None, "o2", 2),    # 5
        ("c", "o2", 3),     # 6: unique
        ("b", "o2", 4)]     # 7: "b" a third time
LATER = [True, False, False, False, True, False, False, True]


def test_later_duplicates_follow_log_order_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(row_index, "KEY_BATCH_ROWS", 3)
    index = row_index.read_row_index(_snapshot(tmp_path / "s.parquet", ROWS))
    assert index.later_duplicate.tolist() == LATER
    assert (index.keys != 0).tolist() == [r[0] is not None for r in ROWS]


def test_colliding_hashes_are_not_taken_for_duplicates(tmp_path, monkeypatch):
    """Every id hashed to the same value: the strings decide, so only the true repeats are duplicates."""
    def colliding(ids):
        return np.full(len(ids), 7, dtype=np.uint64), ids.is_valid().to_numpy(zero_copy_only=False)

    monkeypatch.setattr(row_index, "_id_hashes", colliding)
    monkeypatch.setattr(row_index, "KEY_BATCH_ROWS", 3)
    index = row_index.read_row_index(_snapshot(tmp_path / "s.parquet", ROWS))
    assert index.later_duplicate.tolist() == LATER
