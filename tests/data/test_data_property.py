"""Property: whatever random corruption hits a log file, every non-blank line ends up clean or quarantined, once."""
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.support_triage import generate_logs
from flywheel.config.data import SourceConfig
from tasks.observe import observe
from tasks.validate import GateFailed, validate

_BASE = {}


def base_lines() -> bytes:
    if "data" not in _BASE:
        tmp = Path(tempfile.mkdtemp())
        generate_logs(tmp, days=1, rows_per_day=40, seed=11, defect_rate=0.1, start_date="2026-11-01", fmt="jsonl",
                      parts_per_day=1)
        _BASE["data"] = (tmp / "dt=2026-11-01" / "part-00000.jsonl").read_bytes()
        shutil.rmtree(tmp)
    return _BASE["data"]


corruption = st.lists(st.tuples(
    st.sampled_from(["flip", "delete", "insert_newline", "truncate", "duplicate_line", "garbage"]),
    st.floats(0, 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=12)


def corrupt(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, junk in ops:
        i = int(where * (len(buf) - 1)) if buf else 0
        if op == "flip" and buf:
            buf[i] ^= 0xFF
        elif op == "delete":
            del buf[i:i + len(junk)]
        elif op == "insert_newline":
            buf[i:i] = b"\n"
        elif op == "truncate":
            del buf[i:]
        elif op == "duplicate_line":
            lines = bytes(buf).split(b"\n")
            k = int(where * (len(lines) - 1))
            lines.insert(k, lines[k])
            buf = bytearray(b"\n".join(lines))
        else:
            buf[i:i] = junk
    return bytes(buf)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=corruption)
def test_random_corruption_never_loses_a_row(ops, tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    data = corrupt(base_lines(), ops)
    (root / "logs" / "dt=2026-11-01").mkdir(parents=True)
    (root / "logs" / "dt=2026-11-01" / "part.jsonl").write_bytes(data)
    lines = {n for n, line in enumerate(data.split(b"\n"), 1) if line.strip()}
    obs = observe(SourceConfig(uri=str(root / "logs")), root / "state")
    if not lines:
        assert obs.rows == 0
        return
    try:
        val = validate(obs.snapshot_uri, root / "state")
    except GateFailed as e:                    # heavy corruption may trip a gate; the accounting must still hold
        val = e.validation
    clean = set(pq.read_table(val.clean_uri)["source_line"].to_pylist())
    quarantined = [json.loads(x)["source_line"] for x in Path(val.quarantine_uri).read_text().splitlines()]
    assert val.rows_in == len(lines) == val.rows_clean + val.rows_quarantined
    assert clean.isdisjoint(quarantined) and len(quarantined) == len(set(quarantined))
    assert clean | set(quarantined) == lines
