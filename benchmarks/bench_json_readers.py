"""Which native JSONL reader the ingest's fast path is built on: pyarrow's JSON reader, DuckDB and polars, on the
same file, against msgspec per line (the previous fast path) and our native parse path (``flywheel.logparse``).

    python benchmarks/bench_json_readers.py --json out.json                  # needs bench_ingest.py's data
    python benchmarks/bench_json_readers.py --peer-python /path/venv/bin/python   # a venv with polars + duckdb

Two files, made from ``bench_ingest.py``'s generated logs (``--data``): ``all.jsonl`` (every line, 5 % defects)
and ``clean.jsonl`` (only the valid UTF-8 lines whose fields have the right types). Each reader runs in its own
process (its peak RSS is its own), with its default threads, into a typed table (the snapshot's columns;
``messages`` as a list of role/content structs). On ``all.jsonl`` a reader either refuses the whole file, reads
defects as rows of nulls without a reason, or (ours) keeps every line with the exact reason of each defect: that,
not only speed, is what the choice rests on.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READERS = ("pyarrow", "duckdb", "polars", "msgspec", "flywheel-native", "flywheel-msgspec")
PEERS = ("duckdb", "polars")  # run with --peer-python (not in the project's venv)
COLUMNS = {"request_id": "VARCHAR", "timestamp": "VARCHAR", "task": "VARCHAR", "model_version": "VARCHAR",
           "messages": "STRUCT(role VARCHAR, content VARCHAR)[]", "completion": "VARCHAR",
           "feedback": "STRUCT(thumbs BIGINT, resolved BOOLEAN, escalated BOOLEAN, edited BOOLEAN, comment VARCHAR)",
           "latency_ms": "BIGINT"}


def _arrow_schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    feedback = pa.struct([("thumbs", pa.int64()), ("resolved", pa.bool_()), ("escalated", pa.bool_()),
                          ("edited", pa.bool_()), ("comment", pa.string())])
    return pa.schema([("request_id", pa.string()), ("timestamp", pa.string()), ("task", pa.string()),
                      ("model_version", pa.string()), ("messages", pa.list_(message)), ("completion", pa.string()),
                      ("feedback", feedback), ("latency_ms", pa.int64())])


def _msgspec_decoder():
    """The typed row, as msgspec structs (the previous fast path's decoder)."""
    import msgspec

    message = msgspec.defstruct("Message", [("role", str | None, None), ("content", str | None, None)])
    feedback = msgspec.defstruct("Feedback", [("thumbs", int | None, None), ("resolved", bool | None, None),
                                              ("escalated", bool | None, None), ("edited", bool | None, None),
                                              ("comment", str | None, None)])
    row = msgspec.defstruct("Row", [(k, str | None, None) for k in ("request_id", "timestamp", "task",
                                                                     "model_version", "completion")]
                            + [("messages", list[message] | None, None), ("feedback", feedback | None, None),
                               ("latency_ms", int | None, None)])
    return msgspec.json.Decoder(row)


def read(reader: str, path: Path) -> int:
    """Rows ``reader`` gives for ``path`` (raises when it refuses the file)."""
    if reader == "pyarrow":
        import pyarrow.json as pj

        options = pj.ParseOptions(explicit_schema=_arrow_schema(), unexpected_field_behavior="ignore")
        return pj.read_json(path, parse_options=options).num_rows
    if reader == "duckdb":
        import duckdb

        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items()) + "}"
        query = f"SELECT * FROM read_json('{path}', format='newline_delimited', columns={columns}, ignore_errors=true)"
        return duckdb.sql(query).fetch_arrow_table().num_rows
    if reader == "polars":
        import polars as pl

        schema = pl.Schema({k: v for k, v in pl.from_arrow(_arrow_schema().empty_table()).schema.items()})
        return pl.read_ndjson(path, schema=schema, ignore_errors=True).height
    if reader == "msgspec":
        decode = _msgspec_decoder().decode
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip() and decode(line))
    if reader.startswith("flywheel-"):
        os.environ["FLYWHEEL_PARSE_PATH"] = reader.removeprefix("flywheel-")
        from flywheel.logparse import parse_jsonl

        return parse_jsonl(path.read_bytes(), path.name, "2026-10-01").num_rows
    raise ValueError(f"unknown reader {reader!r}; one of {READERS}")


def _worker(reader: str, path: Path) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    try:
        rows, error = read(reader, path), None
    except Exception as e:  # noqa: BLE001 - a refusal is a result here
        rows, error = None, f"{type(e).__name__}: {str(e)[:120]}"
    print(json.dumps({"rows": rows, "error": error, "s": round(time.perf_counter() - start, 2),
                      "cpu_s": round(time.process_time() - cpu, 2),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def prepare(data: Path, out: Path) -> tuple[Path, Path, int, int]:
    """``all.jsonl`` and ``clean.jsonl`` (the lines of the right types) from the generated logs; their line
    counts."""
    import msgspec

    decode = _msgspec_decoder().decode

    every, clean = out / "all.jsonl", out / "clean.jsonl"
    n_all = n_clean = 0
    with open(every, "wb") as a, open(clean, "wb") as c:
        for part in sorted(p for p in data.rglob("*.jsonl") if not any(x.startswith("_") for x in p.parts)):
            for line in part.read_bytes().splitlines(keepends=True):
                a.write(line)
                n_all += 1
                try:
                    ok = bool(decode(line)) and bool(line.decode("utf-8"))
                except (msgspec.MsgspecError, UnicodeDecodeError):
                    ok = False
                if ok:
                    c.write(line)
                    n_clean += 1
    return every, clean, n_all, n_clean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "flywheel-bench-ingest" / "logs",
                    help="bench_ingest.py's generated logs")
    ap.add_argument("--peer-python", default=sys.executable, help="Python with polars and duckdb installed")
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args.worker[0], Path(args.worker[1]))
    if not args.data.is_dir():
        sys.exit(f"no logs in {args.data}: run benchmarks/bench_ingest.py first (it generates them)")
    with tempfile.TemporaryDirectory() as tmp:
        every, clean, n_all, n_clean = prepare(args.data, Path(tmp))
        size_mb = clean.stat().st_size / 2**20
        results = []
        for reader in args.readers.split(","):
            python = args.peer_python if reader in PEERS else sys.executable
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            for name, path in (("clean", clean), ("all", every)):
                out = subprocess.run([python, __file__, "--worker", reader, str(path)], capture_output=True,
                                     text=True, env=env, check=True)
                results.append({"reader": reader, "file": name, **json.loads(out.stdout.strip().splitlines()[-1])})
    print(f"clean.jsonl: {n_clean} lines, {size_mb:.0f} MB; all.jsonl: {n_all} lines ({n_all - n_clean} with a defect)")
    print(f"{'reader':18}{'file':>6}{'rows':>10}{'s':>8}{'rows/s':>10}{'MB/s':>7}{'cpu s':>7}{'peak MB':>8}  note")
    for r in results:
        lines = n_clean if r["file"] == "clean" else n_all
        rate = round(lines / r["s"]) if r["rows"] is not None else 0
        if r["error"] or r["rows"] != lines:
            note = r["error"] or f"{lines - r['rows']} lines dropped"
        else:
            note = "defects read as rows of nulls, no reason" if r["file"] == "all" and not r["reader"].startswith(
                "flywheel") else ""
        r["rows_per_s"] = rate
        print(f"{r['reader']:18}{r['file']:>6}{r['rows'] if r['rows'] is not None else '-':>10}{r['s']:>8.2f}"
              f"{rate:>10}{size_mb / r['s'] if r['file'] == 'clean' else 0:>7.0f}{r['cpu_s']:>7.1f}"
              f"{r['peak_mb']:>8}  {note}")
    if args.json:
        args.json.write_text(json.dumps({"lines_all": n_all, "lines_clean": n_clean, "clean_mb": round(size_mb),
                                         "cpu_count": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
