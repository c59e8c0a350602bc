"""The keys pass of validate: one streamed read of a snapshot's key columns, in row batches.

What validate needs across the whole night, without holding the night's rows:

- ``keys``: each row's (request_id, timestamp) key for ``flywheel.seen_ids`` (a row an earlier night accepted);
- ``later_duplicate``: the rows whose request_id already appeared on an earlier line, in log order (object in
  first-seen order, then line): the contract's ``duplicate:request_id`` — the first occurrence stays clean.

Exact, in O(rows) small numbers: each id is hashed to 64 bits per batch; only ids whose hash occurs more than once
(true duplicates and the rare collision) are read back as strings and compared, so equal hashes of different ids
are never taken for duplicates. Memory per row: about 30 bytes (hash, key, object code, line), whatever the ids'
and objects' lengths.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel import seen_ids

KEY_COLUMNS = ["request_id", "timestamp", "source_object", "source_line"]
KEY_BATCH_ROWS = 256 * 1024  # rows per batch: the ids' Python strings of one batch exist at a time


@dataclass
class RowIndex:
    keys: np.ndarray  # (rows,) uint64 seen_ids key of (request_id, timestamp); 0 = either missing
    later_duplicate: np.ndarray  # (rows,) bool: non-null request_id already seen on an earlier line


def _id_hashes(ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(rows,) uint64 hash of each request_id and (rows,) bool: the id is present."""
    present = ids.is_valid().to_numpy(zero_copy_only=False)
    texts = np.asarray(ids.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    return pd.util.hash_array(texts).astype(np.uint64, copy=False), present


def read_row_index(snapshot_uri) -> RowIndex:
    """Stream the key columns of the snapshot at ``snapshot_uri`` once; see the module docstring."""
    keys, hashes, present, objects, lines = [], [], [], [], []
    object_codes: dict[str, int] = {}  # source object -> its first-seen rank
    for batch in pq.ParquetFile(snapshot_uri).iter_batches(batch_size=KEY_BATCH_ROWS, columns=KEY_COLUMNS):
        table = pa.Table.from_batches([batch])
        keys.append(seen_ids.row_keys(table))
        h, p = _id_hashes(table["request_id"])
        hashes.append(h)
        present.append(p)
        encoded = pc.dictionary_encode(table["source_object"].combine_chunks())
        ranks = np.array([object_codes.setdefault(o, len(object_codes)) for o in encoded.dictionary.to_pylist()]
                         + [-1], dtype=np.int64)
        objects.append(ranks[encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)])
        lines.append(table["source_line"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))
    if not keys:
        empty = np.zeros(0, np.uint64)
        return RowIndex(empty, np.zeros(0, bool))
    h, p = np.concatenate(hashes), np.concatenate(present)
    order = np.lexsort((np.concatenate(lines), np.concatenate(objects)))  # log order
    return RowIndex(np.concatenate(keys), _later_duplicates(snapshot_uri, h, p, order))


def _take_ids(snapshot_uri, rows: np.ndarray) -> pa.Array:
    """The request_id of each of the ascending snapshot ``rows``, read batch by batch."""
    parts, at = [], 0
    for batch in pq.ParquetFile(snapshot_uri).iter_batches(batch_size=KEY_BATCH_ROWS, columns=["request_id"]):
        lo, hi = np.searchsorted(rows, [at, at + batch.num_rows])
        if hi > lo:
            parts.append(batch.column(0).take(pa.array(rows[lo:hi] - at)))
        at += batch.num_rows
    return pa.concat_arrays(parts)


def _later_duplicates(snapshot_uri, hashes: np.ndarray, present: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(rows,) bool: present ids equal to an id on an earlier line (``order`` = rows in log order)."""
    later = np.zeros(len(hashes), dtype=bool)
    values, counts = np.unique(hashes[present], return_counts=True)
    candidates = np.flatnonzero(present & np.isin(hashes, values[counts > 1]))  # ascending snapshot rows
    if not len(candidates):
        return later
    codes = pc.dictionary_encode(_take_ids(snapshot_uri, candidates)).indices.to_numpy()  # equal ids, equal codes
    rank = np.empty(len(hashes), dtype=np.int64)
    rank[order] = np.arange(len(order))  # position of each row in log order
    by_log = np.argsort(rank[candidates], kind="stable")
    first = np.zeros(len(candidates), dtype=bool)
    _, where = np.unique(codes[by_log], return_index=True)
    first[by_log[where]] = True
    later[candidates[~first]] = True
    return later
