"""Validate: enforce the data contract on a raw snapshot; quarantine what fails, scrub PII from the rest.

1. Parse-level failures found by observe (``malformed_json``, ``invalid_utf8``, ``not_an_object``, ``type:<field>``)
   are taken as they are; lines that did not decode to an object never reach Great Expectations.
2. The contract's GX suite (``data_contracts/<contract>.py: build_suite``) runs once on a check frame of the decoded
   rows with ``result_format="COMPLETE"``; each failed expectation gives the failing rows (index = snapshot row) and
   its ``meta["check"]`` names the reason. Duplicates keep their first line in log order (object, line).
3. Every rejected row becomes one quarantine JSONL record: source object and line, request_id, every reason, raw input.
4. Clean rows lose the internal ``_`` columns, are PII-scrubbed (counts per pattern) and written as the clean snapshot.
5. Batch gates (min rows, quarantine fraction, null rate of key fields, duplicate rate) are evaluated; a failure raises
   ``GateFailed`` naming the gate and the numbers, after the quarantine and the report are written.
6. ``rows_in == rows_clean + rows_quarantined`` is checked on every run.
"""
from __future__ import annotations

import datetime as dt
import html
import importlib
import os
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from flywheel import pii
from flywheel.config.data import ValidateConfig
from flywheel.schema import SNAPSHOT_COLUMNS

KEY_FIELDS = ("request_id", "timestamp", "task", "model_version", "messages", "completion")
CHECK_COLUMNS = ["request_id", "timestamp", "task", "model_version", "completion", "comment", "thumbs", "latency_ms",
                 "_n_messages", "_max_content_chars", "_roles", "_errors", "_decoded", "source_object", "source_line"]
BATCH_ROWS = 64 * 1024


class GateResult(BaseModel):
    name: str
    passed: bool
    value: float
    threshold: float
    message: str


class Validation(BaseModel):
    """What one validate run produced (a small record passed between tasks)."""

    snapshot_hash: str
    contract: str
    rows_in: int
    rows_clean: int
    rows_quarantined: int
    clean_uri: str
    quarantine_uri: str
    report_uri: str
    report_html_uri: str
    checks: dict[str, int]          # reason -> rows failing it
    pii: dict[str, int]             # pattern -> matches scrubbed
    gates: list[GateResult]
    passed: bool
    seconds: dict[str, float] = {}


class GateFailed(RuntimeError):
    """A batch gate failed; ``.validation`` holds the full record (report and quarantine were written)."""

    def __init__(self, message: str, validation: Validation):
        super().__init__(message)
        self.validation = validation


class ContractError(ValueError):
    """The configured contract cannot be loaded."""


def load_contract(name: str):
    try:
        module = importlib.import_module(f"data_contracts.{name}")
    except ModuleNotFoundError:
        raise ContractError(f"validate.contract: no module data_contracts/{name}.py") from None
    if not hasattr(module, "build_suite"):
        raise ContractError(f"validate.contract: data_contracts/{name}.py has no build_suite()")
    return module


def _check_frame(table: pa.Table, rows: np.ndarray, id_codes: np.ndarray):
    """The columns the suite checks, for the decoded rows; index = row number in the snapshot.

    Nothing is copied row by row in Arrow: numbers are computed on whole columns and indexed in numpy; text columns
    become pandas categoricals (GX filters the whole frame once per expectation: taking codes is cheap) and
    ``request_id`` becomes its dictionary code (equal ids, equal codes) plus its length.
    """
    import pandas as pd

    def num(col) -> np.ndarray:
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)[rows]

    def text(col) -> pd.Categorical:
        enc = pc.dictionary_encode(col.combine_chunks())
        return pd.Categorical.from_codes(enc.indices.fill_null(-1).to_numpy()[rows], enc.dictionary.to_pylist())

    ids = id_codes[rows].astype(np.float64)
    ids[ids < 0] = np.nan
    frame = pd.DataFrame({
        "request_id_key": ids,
        "request_id_chars": num(pc.utf8_length(table["request_id"])),
        "timestamp": table["timestamp"].take(pa.array(rows)).to_pandas(),
        "task": text(table["task"]),
        "model_version": text(table["model_version"]),
        "completion_chars": num(pc.utf8_length(table["completion"])),
        "comment_chars": num(pc.utf8_length(table["comment"])),
        "messages_count": num(table["_n_messages"]),
        "message_max_chars": num(table["_max_content_chars"]),
        "message_roles": text(table["_roles"]),
        "thumbs": num(table["thumbs"]),
        "latency_ms": num(table["latency_ms"]),
    })
    frame.index = rows
    return frame


def _id_codes(table: pa.Table) -> np.ndarray:
    """Dictionary code of each request_id (equal ids, equal codes; -1 = missing)."""
    return pc.dictionary_encode(table["request_id"].combine_chunks()).indices.fill_null(-1).to_numpy()


def _later_duplicates(table: pa.Table, codes: np.ndarray) -> np.ndarray:
    """True for every non-null request_id already seen on an earlier line (the first occurrence stays clean).

    "Earlier" is log order (object, then line), not snapshot order: observe writes each object's well-formed lines
    before its odd ones, and which line of a duplicated pair is kept must not depend on that.
    """
    objects = pc.dictionary_encode(table["source_object"].combine_chunks()).indices.to_numpy()  # first-seen order
    order = np.lexsort((table["source_line"].to_numpy(), objects))
    first = np.zeros(len(codes), dtype=bool)
    _, where = np.unique(codes[order], return_index=True)
    first[order[where]] = True
    return (codes >= 0) & ~first


def _context():
    """An ephemeral GX context with in-memory stores and no data-docs site (nothing under the temp folder)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    return gx.get_context(project_config=config, mode="ephemeral")


def run_suite(frame, suite_builder, limits, now: str | None) -> dict[str, np.ndarray]:
    """Run the contract's suite on ``frame``; returns reason -> snapshot rows that failed it."""
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = _context()
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001, S110 - progress bars are cosmetic
        pass
    suite = context.suites.add(suite_builder(limits, now=now))
    batch = context.data_sources.add_pandas("snapshot").add_dataframe_asset("rows") \
        .add_batch_definition_whole_dataframe("all")
    definition = gx.ValidationDefinition(data=batch, suite=suite, name="contract")
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
    failures: dict[str, np.ndarray] = {}
    for r in result.results:
        cfg = r.expectation_config
        name = (cfg.meta or {}).get("check") or f"{cfg.type}:{cfg.kwargs.get('column')}"
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise RuntimeError(f"contract check {name} could not run: {r.exception_info.get('exception_message')}")
        idx = r.result.get("unexpected_index_list") or []
        failures[name] = np.asarray(idx, dtype=np.int64)
    return failures


def validate(snapshot_uri: str | Path, state_dir: str | Path, cfg: ValidateConfig | None = None,
             snapshot_hash: str | None = None, now: str | None = None) -> Validation:
    """Validate the raw snapshot at ``snapshot_uri`` against ``cfg.contract``; see the module docstring."""
    cfg = cfg or ValidateConfig()
    state = Path(state_dir)
    contract = load_contract(cfg.contract)
    pii.patterns(cfg.pii.extra_patterns)                    # fail early on a bad extra regex
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    table = pq.read_table(snapshot_uri, columns=CHECK_COLUMNS)   # no message texts: those are streamed below
    snapshot_hash = snapshot_hash or Path(snapshot_uri).name.split(".")[0]
    tag = snapshot_hash[:16]
    rows_in = table.num_rows
    seconds["load"] = time.perf_counter() - t0

    # 1. parse-level reasons, and the rows the suite sees
    t0 = time.perf_counter()
    decoded = table["_decoded"].to_numpy(zero_copy_only=False).astype(bool)
    failures: dict[str, list[np.ndarray]] = {}
    err_rows = np.flatnonzero(table["_errors"].is_valid().to_numpy(zero_copy_only=False))
    parse_reasons: dict[int, list[str]] = {}
    for i, errs in zip(err_rows.tolist(), table["_errors"].take(pa.array(err_rows)).to_pylist()):
        parse_reasons[i] = errs.split("|")
        for reason in parse_reasons[i]:
            failures.setdefault(reason, []).append(np.array([i]))

    # 2. the contract's suite
    rows = np.flatnonzero(decoded)
    id_codes = _id_codes(table)
    suite_failures = (run_suite(_check_frame(table, rows, id_codes), contract.build_suite, cfg.limits, now)
                      if len(rows) else {})
    later_dup = _later_duplicates(table, id_codes)
    del table
    for name, idx in suite_failures.items():
        if name.startswith("duplicate:"):
            idx = idx[later_dup[idx]]                        # keep the first occurrence
        if name.startswith("missing:"):                      # a wrong type is reported as such, not as missing
            typed = "type:" + name.split(":", 1)[1]
            idx = np.array([i for i in idx.tolist() if typed not in parse_reasons.get(i, ())], dtype=np.int64)
        if len(idx):
            failures.setdefault(name, []).append(idx)
    failed = {name: np.unique(np.concatenate(parts)) for name, parts in failures.items()}
    bad = np.zeros(rows_in, dtype=bool)
    for idx in failed.values():
        bad[idx] = True
    reasons: dict[int, list[str]] = {}
    for name in sorted(failed):
        for i in failed[name].tolist():
            reasons.setdefault(i, []).append(name)
    seconds["checks"] = time.perf_counter() - t0

    # 3-4. one streamed pass: rejected rows -> quarantine JSONL, clean rows -> PII scrub -> clean snapshot
    quarantine_path = state / "quarantine" / f"{tag}.jsonl"
    clean_path = state / "snapshots" / f"{tag}.clean.parquet"
    for path in (quarantine_path, clean_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    examples: dict[str, list[dict]] = {}
    pii_counts: dict[str, int] = {}
    rows_clean, offset = 0, 0
    seconds.update(quarantine=0.0, pii=0.0, write=0.0)
    q_tmp, c_tmp = quarantine_path.with_suffix(".tmp"), clean_path.with_suffix(".tmp")
    schema = pq.read_schema(snapshot_uri)
    clean_schema = pa.schema([schema.field(c) for c in SNAPSHOT_COLUMNS])
    with open(q_tmp, "wb") as qf, pq.ParquetWriter(c_tmp, clean_schema, compression="zstd", compression_level=1,
                                                   use_dictionary=["dt", "task", "model_version", "source_object"]) \
            as writer:
        for batch in pq.ParquetFile(snapshot_uri).iter_batches(batch_size=BATCH_ROWS):
            t0 = time.perf_counter()
            mask = bad[offset:offset + batch.num_rows]
            if mask.any():
                _write_quarantine(qf, batch.filter(pa.array(mask)), offset + np.flatnonzero(mask), reasons, tag,
                                  cfg.contract, examples)
            seconds["quarantine"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            clean = pa.Table.from_batches([batch]).filter(pa.array(~mask)).select(SNAPSHOT_COLUMNS)
            if cfg.pii.enabled:
                clean, counts = pii.scrub(clean, cfg.pii.extra_patterns)
                for k, n in counts.items():
                    pii_counts[k] = pii_counts.get(k, 0) + n
            seconds["pii"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            writer.write_table(clean, row_group_size=BATCH_ROWS)
            rows_clean += clean.num_rows
            offset += batch.num_rows
            seconds["write"] += time.perf_counter() - t0
    os.replace(q_tmp, quarantine_path)
    os.replace(c_tmp, clean_path)

    # 5. invariant and gates
    rows_quarantined = int(bad.sum())
    if offset != rows_in or rows_in != rows_clean + rows_quarantined:
        raise RuntimeError(f"invariant broken: rows_in={rows_in} != rows_clean={rows_clean} + "
                           f"rows_quarantined={rows_quarantined} (snapshot {snapshot_uri})")
    checks = {name: len(idx) for name, idx in sorted(failed.items())}
    gates = evaluate_gates(cfg, rows_in, rows_quarantined, checks, decoded)
    report_path = state / "reports" / f"validation-{tag}.json"
    record = Validation(
        snapshot_hash=snapshot_hash, contract=cfg.contract, rows_in=rows_in, rows_clean=rows_clean,
        rows_quarantined=rows_quarantined, clean_uri=str(clean_path), quarantine_uri=str(quarantine_path),
        report_uri=str(report_path), report_html_uri=str(report_path.with_suffix(".html")), checks=checks,
        pii=pii_counts, gates=gates, passed=all(g.passed for g in gates),
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
    write_report(record, examples, snapshot_uri)
    if not record.passed:
        raise GateFailed("validate: batch gate failed: " + "; ".join(g.message for g in gates if not g.passed), record)
    return record


def evaluate_gates(cfg: ValidateConfig, rows_in: int, rows_quarantined: int, checks: dict[str, int],
                   decoded: np.ndarray) -> list[GateResult]:
    g = cfg.gates
    n = max(rows_in, 1)
    undecoded = int((~decoded).sum())
    nulls = {f: checks.get(f"missing:{f}", 0) + checks.get(f"type:{f}", 0) + undecoded for f in KEY_FIELDS}
    worst = max(nulls, key=nulls.get)
    dups = checks.get("duplicate:request_id", 0)
    q = rows_quarantined / n

    def cmp(value: float, limit: float) -> str:
        return "<=" if value <= limit else ">"

    return [
        GateResult(name="min_rows", passed=rows_in >= g.min_rows, value=rows_in, threshold=g.min_rows,
                   message=f"gate min_rows: {rows_in} rows in, need at least {g.min_rows}"),
        GateResult(name="max_quarantine_fraction", passed=q <= g.max_quarantine_fraction, value=round(q, 6),
                   threshold=g.max_quarantine_fraction,
                   message=f"gate max_quarantine_fraction: {rows_quarantined} of {rows_in} rows quarantined "
                           f"({q:.2%}) {cmp(q, g.max_quarantine_fraction)} max {g.max_quarantine_fraction:.2%}"),
        GateResult(name="max_null_rate", passed=nulls[worst] / n <= g.max_null_rate, value=round(nulls[worst] / n, 6),
                   threshold=g.max_null_rate,
                   message=f"gate max_null_rate: key field {worst} is missing or unreadable in {nulls[worst]} of "
                           f"{rows_in} rows ({nulls[worst] / n:.2%}) {cmp(nulls[worst] / n, g.max_null_rate)} max {g.max_null_rate:.2%}"),
        GateResult(name="max_duplicate_rate", passed=dups / n <= g.max_duplicate_rate, value=round(dups / n, 6),
                   threshold=g.max_duplicate_rate,
                   message=f"gate max_duplicate_rate: {dups} of {rows_in} rows repeat an earlier request_id "
                           f"({dups / n:.2%}) {cmp(dups / n, g.max_duplicate_rate)} max {g.max_duplicate_rate:.2%}"),
    ]


def _rebuild(row: dict) -> str:
    """The log record of a row that decoded fine (its raw line is not kept), in the DESIGN.md §2 shape."""
    ts = row["timestamp"]
    record = {
        "request_id": row["request_id"], "timestamp": ts.isoformat() if ts is not None else None,
        "task": row["task"], "model_version": row["model_version"],
        "messages": orjson.loads(row["messages"]) if row["messages"] else None, "completion": row["completion"],
        "feedback": {k: row[k] for k in ("thumbs", "resolved", "escalated", "edited", "comment")},
        "latency_ms": row["latency_ms"], "metadata": orjson.loads(row["metadata"]) if row["metadata"] else None,
    }
    return orjson.dumps(record).decode()


def _write_quarantine(out, batch: pa.RecordBatch, rows: np.ndarray, reasons: dict[int, list[str]], tag: str,
                      contract: str, examples: dict[str, list[dict]], per_check: int = 3) -> None:
    """One JSONL record per rejected row of ``batch`` (snapshot row numbers ``rows``); keeps a few examples."""
    lines = []
    for i, row in zip(rows.tolist(), batch.to_pylist()):
        raw = row["_raw"] if row["_raw"] is not None else _rebuild(row)
        rec = {"source_object": row["source_object"], "source_line": row["source_line"], "dt": row["dt"],
               "request_id": row["request_id"], "reasons": reasons[i], "raw": raw, "snapshot": tag,
               "contract": contract}
        lines.append(orjson.dumps(rec) + b"\n")
        for reason in reasons[i]:
            ex = examples.setdefault(reason, [])
            if len(ex) < per_check:
                ex.append({"source_object": rec["source_object"], "source_line": rec["source_line"],
                           "request_id": rec["request_id"], "raw": raw[:300]})
    out.write(b"".join(lines))


def write_report(v: Validation, examples: dict[str, list[dict]], snapshot_uri: str | Path) -> None:
    """Validation report: JSON (machine) and HTML (people): counts per check, examples, PII, gates."""
    report = {**v.model_dump(), "snapshot_uri": str(snapshot_uri), "examples": examples,
              "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    path = Path(v.report_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    e = html.escape
    def shown(x: dict) -> str:
        return e(f"{x['source_object']}:{x['source_line']} {x['raw'][:120]}")

    rows = "".join(f"<tr><td>{e(name)}</td><td>{n}</td><td>{'<br>'.join(shown(x) for x in examples.get(name, []))}"
                   f"</td></tr>" for name, n in v.checks.items())
    gates = "".join(f"<tr><td>{e(g.name)}</td><td>{'pass' if g.passed else '<b>FAIL</b>'}</td><td>{g.value}</td>"
                    f"<td>{g.threshold}</td><td>{e(g.message)}</td></tr>" for g in v.gates)
    pii_rows = "".join(f"<tr><td>{e(k)}</td><td>{n}</td></tr>" for k, n in v.pii.items())
    path.with_suffix(".html").write_text(f"""<!doctype html><html><head><meta charset="utf-8">
<title>Validation {e(v.snapshot_hash[:16])}</title><style>body{{font-family:sans-serif;margin:2em}}
table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
td:nth-child(3){{font-family:monospace;font-size:90%}}</style></head><body>
<h1>Validation report: {e(v.contract)}</h1>
<p>Snapshot <code>{e(str(snapshot_uri))}</code> ({e(v.snapshot_hash[:16])})<br>
rows in <b>{v.rows_in}</b> = clean <b>{v.rows_clean}</b> + quarantined <b>{v.rows_quarantined}</b>
&nbsp;·&nbsp; {'all gates passed' if v.passed else '<b>a gate failed</b>'}</p>
<h2>Gates</h2><table><tr><th>gate</th><th>result</th><th>value</th><th>threshold</th><th>message</th></tr>{gates}</table>
<h2>Failed checks</h2><table><tr><th>reason</th><th>rows</th><th>examples (object:line raw)</th></tr>{rows}</table>
<h2>PII scrubbed from clean rows</h2><table><tr><th>pattern</th><th>matches</th></tr>{pii_rows}</table>
<p>Quarantine: <code>{e(v.quarantine_uri)}</code> · clean snapshot: <code>{e(v.clean_uri)}</code></p>
</body></html>""")
