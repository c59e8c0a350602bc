"""The validate stage: enforce the data contract on a raw snapshot; quarantine what fails, scrub PII from the rest.

1. Parse-level failures found by observe (``malformed_json``, ``invalid_utf8``, ``not_an_object``, ``type:<field>``)
   are taken as they are; lines that did not decode to an object never reach Great Expectations.
2. The contract's GX suite (``data_contracts/<contract>.py: build_suite``) runs on a check frame of the decoded
   rows, one batch of ``CHECK_BATCH_ROWS`` rows at a time (memory stays flat with the night's size), with
   ``result_format="COMPLETE"``; each failed expectation gives the failing rows (index = snapshot row) and its
   ``meta["check"]`` names the reason. ``duplicate:request_id`` spans the whole night: a keys pass over the snapshot
   (``flywheel.row_index``) finds every id seen on an earlier line in log order (object, line), and the first stays
   clean; a row an earlier committed batch already accepted is ``duplicate:earlier_batch`` (``flywheel.seen_ids``).
3. Every rejected row becomes one quarantine JSONL record: source object and line, request_id, every reason, raw input.
4. Clean rows lose the internal ``_`` columns, are PII-scrubbed (counts per pattern) and written as the clean snapshot.
5. Batch gates (min rows, quarantine fraction, null rate of key fields, duplicate rate) are evaluated; a failure raises
   ``GateFailed`` naming the gate and the numbers, after the quarantine and the report are written.
6. ``rows_in == rows_clean + rows_quarantined`` is checked on every run.

``validate_snapshot`` is the Prefect task (deterministic: no retries).
"""
from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from flywheel import pii, seen_ids
from flywheel.config.data import GatesConfig, ValidateConfig
from flywheel.logfields import logged_record
from flywheel.quarantine import open_private, quarantine_dir
from flywheel.records import GateResult, Observation, Validation
from flywheel.row_index import read_row_index
from flywheel.schema import SNAPSHOT_COLUMNS
from flywheel.validation_report import write_report

KEY_FIELDS = ("request_id", "timestamp", "task", "model_version", "messages", "completion")
CHECK_COLUMNS = ["request_id", "timestamp", "task", "model_version", "completion", "comment", "thumbs", "latency_ms",
                 "_n_messages", "_max_content_chars", "_roles", "_errors", "_decoded", "source_object", "source_line"]
CLEAN_DICTIONARY_COLUMNS = ["dt", "task", "model_version", "source_object"]
BATCH_ROWS = 64 * 1024
CHECK_BATCH_ROWS = 512 * 1024  # rows per run of the suite: bounds the check frame (and GX's copies of it)
# Repeated texts of the check columns stay dictionary-encoded in memory (not source_object: its codes give log order)
DICTIONARY_CHECK_COLUMNS = ["task", "model_version", "_roles", "_errors"]
EXAMPLES_PER_CHECK = 3


class GateFailed(RuntimeError):
    """A batch gate failed; ``.validation`` holds the full record (report and quarantine were written)."""

    def __init__(self, message: str, validation: Validation):
        super().__init__(message)
        self.validation = validation


class ContractError(ValueError):
    """The configured contract cannot be loaded."""


def load_contract(name: str) -> ModuleType:
    """The module ``data_contracts.<name>``, checked to expose ``build_suite``."""
    try:
        module = importlib.import_module(f"data_contracts.{name}")
    except ModuleNotFoundError:
        raise ContractError(f"validate.contract: no module data_contracts/{name}.py") from None
    if not hasattr(module, "build_suite"):
        raise ContractError(f"validate.contract: data_contracts/{name}.py has no build_suite()")
    return module


# ---------------------------------------------------------------- the contract's checks


def _check_frame(table: pa.Table, rows: np.ndarray, offset: int):
    """The columns the suite checks, for the decoded ``rows`` of one batch; index = row number in the snapshot
    (``offset`` = the batch's first row).

    Nothing is copied row by row in Arrow: numbers are computed on whole columns and indexed in numpy; text columns
    become pandas categoricals (GX filters the whole frame once per expectation: taking codes is cheap) and
    ``request_id`` becomes its dictionary code in the batch (equal ids, equal codes) plus its length.
    """
    import pandas as pd

    def numbers(column) -> np.ndarray:
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)[rows]

    def categories(column) -> pd.Categorical:
        encoded = pc.dictionary_encode(column.combine_chunks())
        return pd.Categorical.from_codes(encoded.indices.fill_null(-1).to_numpy()[rows],
                                         encoded.dictionary.to_pylist())

    ids = _id_codes(table)[rows].astype(np.float64)
    ids[ids < 0] = np.nan
    frame = pd.DataFrame({
        "request_id_key": ids,
        "request_id_chars": numbers(pc.utf8_length(table["request_id"])),
        "timestamp": table["timestamp"].take(pa.array(rows)).to_pandas(),
        "task": categories(table["task"]),
        "model_version": categories(table["model_version"]),
        "completion_chars": numbers(pc.utf8_length(table["completion"])),
        "comment_chars": numbers(pc.utf8_length(table["comment"])),
        "messages_count": numbers(table["_n_messages"]),
        "message_max_chars": numbers(table["_max_content_chars"]),
        "message_roles": categories(table["_roles"]),
        "thumbs": numbers(table["thumbs"]),
        "latency_ms": numbers(table["latency_ms"]),
    })
    frame.index = offset + rows
    return frame


def _id_codes(table: pa.Table) -> np.ndarray:
    """Dictionary code of each request_id (equal ids, equal codes; -1 = missing)."""
    return pc.dictionary_encode(table["request_id"].combine_chunks()).indices.fill_null(-1).to_numpy()


def _gx_context():
    """An ephemeral GX context with in-memory stores and no data-docs site (nothing under the temp folder)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    return gx.get_context(project_config=config, mode="ephemeral")


def suite_runner(suite):
    """A function running the GX ``suite`` on a check frame: frame -> {reason: snapshot rows that failed it}.

    One ephemeral context and batch definition serve every batch of the night. Each batch validates the suite
    directly (``Batch.validate``): same expectations and results as a ``ValidationDefinition``, without serialising
    the COMPLETE result (every failing index) into a results store that an ephemeral context throws away.
    """
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = _gx_context()
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001, S110 - progress bars are cosmetic
        pass
    definition = context.data_sources.add_pandas("snapshot").add_dataframe_asset("rows") \
        .add_batch_definition_whole_dataframe("all")

    def run(frame) -> dict[str, np.ndarray]:
        result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite,
                                                                                     result_format="COMPLETE")
        failures: dict[str, np.ndarray] = {}
        for outcome in result.results:
            expectation = outcome.expectation_config
            name = (expectation.meta or {}).get("check") or f"{expectation.type}:{expectation.kwargs.get('column')}"
            if outcome.exception_info and outcome.exception_info.get("raised_exception"):
                raise RuntimeError(f"contract check {name} could not run: "
                                   f"{outcome.exception_info.get('exception_message')}")
            failures[name] = np.asarray(outcome.result.get("unexpected_index_list") or [], dtype=np.int64)
        return failures
    return run


@dataclass
class _Verdict:
    """Which snapshot rows failed which check."""

    failed: dict[str, np.ndarray]  # reason -> sorted snapshot rows
    rejected: np.ndarray  # (rows_in,) bool: the row failed at least one check
    reasons: dict[int, list[str]]  # snapshot row -> its reasons, sorted
    decoded: np.ndarray  # (rows_in,) bool: the line decoded to a JSON object


def _parse_reasons(table: pa.Table, offset: int) -> dict[int, list[str]]:
    """Snapshot row -> the parse-level reasons observe recorded in ``_errors`` (``offset``: the batch's first row)."""
    rows = np.flatnonzero(table["_errors"].is_valid().to_numpy(zero_copy_only=False))
    errors = table["_errors"].take(pa.array(rows)).to_pylist()
    return {offset + row: joined.split("|") for row, joined in zip(rows.tolist(), errors)}


def _row_checks(suite):
    """The suite without ``duplicate:request_id``, which no batch can answer alone (the keys pass does, over the
    night), and whether the contract asks for it."""
    import great_expectations as gx

    kept = [e for e in suite.expectations if (e.meta or {}).get("check") != "duplicate:request_id"]
    if len(kept) == len(suite.expectations):
        return suite, False
    return gx.ExpectationSuite(name=suite.name, expectations=[e.copy(deep=True) for e in kept]), True


def _judge_rows(snapshot_uri: str | Path, contract: ModuleType, cfg: ValidateConfig, now: str | None,
                replayed: np.ndarray, later_duplicate: np.ndarray) -> _Verdict:
    """Parse-level reasons, rows accepted by an earlier batch (``replayed``), the contract suite's failures batch by
    batch, and ``duplicate:request_id`` over the whole night (``later_duplicate``, from the keys pass)."""
    rows_in = len(replayed)
    decoded = np.zeros(rows_in, dtype=bool)
    parse_reasons: dict[int, list[str]] = {}
    failures: dict[str, list[np.ndarray]] = {"duplicate:earlier_batch": [np.flatnonzero(replayed)]}
    suite, night_wide = _row_checks(contract.build_suite(cfg.limits.contract_limits(), now=now))
    run = None
    at = 0
    snapshot = pq.ParquetFile(snapshot_uri, read_dictionary=DICTIONARY_CHECK_COLUMNS)
    for batch in snapshot.iter_batches(batch_size=CHECK_BATCH_ROWS, columns=CHECK_COLUMNS):
        table = pa.Table.from_batches([batch])  # the message texts are not read: those are streamed by the split
        decoded[at:at + table.num_rows] = table["_decoded"].to_numpy(zero_copy_only=False).astype(bool)
        reasons = _parse_reasons(table, at)
        parse_reasons.update(reasons)
        for row, row_reasons in reasons.items():
            for reason in row_reasons:
                failures.setdefault(reason, []).append(np.array([row]))
        rows = np.flatnonzero(decoded[at:at + table.num_rows])
        if len(rows):
            run = run or suite_runner(suite)
            for name, idx in run(_check_frame(table, rows, at)).items():
                if name.startswith("missing:"):  # a wrong type is reported as such, not as missing
                    typed = "type:" + name.split(":", 1)[1]
                    idx = np.array([i for i in idx.tolist() if typed not in parse_reasons.get(i, ())], dtype=np.int64)
                if len(idx):
                    failures.setdefault(name, []).append(idx)
        at += table.num_rows
    if night_wide:
        failures["duplicate:request_id"] = [np.flatnonzero(later_duplicate & decoded)]
    failed = {name: np.unique(np.concatenate(parts)) for name, parts in failures.items()
              if sum(map(len, parts))}
    rejected = np.zeros(rows_in, dtype=bool)
    row_reasons: dict[int, list[str]] = {}
    for name in sorted(failed):
        rejected[failed[name]] = True
        for row in failed[name].tolist():
            row_reasons.setdefault(row, []).append(name)
    return _Verdict(failed, rejected, row_reasons, decoded)


# ---------------------------------------------------------------- quarantine and clean snapshot


def _quarantine_lines(batch: pa.RecordBatch, rows: np.ndarray, reasons: dict[int, list[str]], tag: str,
                      contract: str, examples: dict[str, list[dict]]) -> bytes:
    """One JSONL record per rejected row of ``batch`` (snapshot row numbers ``rows``); keeps a few examples."""
    lines = []
    for i, row in zip(rows.tolist(), batch.to_pylist()):
        raw = row["_raw"] if row["_raw"] is not None else logged_record(row)
        record = {"source_object": row["source_object"], "source_line": row["source_line"], "dt": row["dt"],
                  "request_id": row["request_id"], "reasons": reasons[i], "raw": raw, "snapshot": tag,
                  "contract": contract}
        lines.append(orjson.dumps(record) + b"\n")
        for reason in reasons[i]:
            shown = examples.setdefault(reason, [])
            if len(shown) < EXAMPLES_PER_CHECK:
                shown.append({"source_object": record["source_object"], "source_line": record["source_line"],
                              "request_id": record["request_id"], "raw": raw})  # cut in _report_examples
    return b"".join(lines)


def _report_examples(examples: dict[str, list[dict]], cfg: ValidateConfig) -> dict[str, list[dict]]:
    """The report's examples: each raw line PII-scrubbed (as the clean rows are) before it is cut to 300 characters,
    so the report (an output that leaves the stage) holds no PII; the quarantine keeps the raw line."""
    if cfg.pii.enabled:
        examples = pii.scrub_json(examples, cfg.pii.extra_patterns)
    return {reason: [{**e, "raw": e["raw"][:300]} for e in shown] for reason, shown in examples.items()}


@dataclass
class _Split:
    """What the streamed pass over the snapshot wrote."""

    rows_seen: int = 0
    rows_clean: int = 0
    pii: dict[str, int] = field(default_factory=dict)  # pattern -> matches scrubbed
    examples: dict[str, list[dict]] = field(default_factory=dict)  # reason -> a few quarantined rows


def _split_snapshot(snapshot_uri: str | Path, verdict: _Verdict, cfg: ValidateConfig, tag: str,
                    quarantine_path: Path, clean_path: Path, seconds: dict[str, float]) -> _Split:
    """One streamed pass: rejected rows -> quarantine JSONL, clean rows -> PII scrub -> clean snapshot."""
    split = _Split()
    seconds.update(quarantine=0.0, pii=0.0, write=0.0)
    quarantine_partial, clean_partial = quarantine_path.with_suffix(".tmp"), clean_path.with_suffix(".tmp")
    raw_schema = pq.read_schema(snapshot_uri)
    clean_schema = pa.schema([raw_schema.field(c) for c in SNAPSHOT_COLUMNS])
    with open_private(quarantine_partial) as quarantine, pq.ParquetWriter(
            clean_partial, clean_schema, compression="zstd", compression_level=1,
            use_dictionary=CLEAN_DICTIONARY_COLUMNS) as writer:
        for batch in pq.ParquetFile(snapshot_uri).iter_batches(batch_size=BATCH_ROWS):
            start = time.perf_counter()
            mask = verdict.rejected[split.rows_seen:split.rows_seen + batch.num_rows]
            if mask.any():
                quarantine.write(_quarantine_lines(batch.filter(pa.array(mask)), split.rows_seen + np.flatnonzero(mask),
                                                   verdict.reasons, tag, cfg.contract, split.examples))
            seconds["quarantine"] += time.perf_counter() - start
            start = time.perf_counter()
            clean = pa.Table.from_batches([batch]).filter(pa.array(~mask)).select(SNAPSHOT_COLUMNS)
            if cfg.pii.enabled:
                clean, counts = pii.scrub(clean, cfg.pii.extra_patterns)
                for name, n in counts.items():
                    split.pii[name] = split.pii.get(name, 0) + n
            seconds["pii"] += time.perf_counter() - start
            start = time.perf_counter()
            writer.write_table(clean, row_group_size=BATCH_ROWS)
            split.rows_clean += clean.num_rows
            split.rows_seen += batch.num_rows
            seconds["write"] += time.perf_counter() - start
    os.replace(quarantine_partial, quarantine_path)
    os.replace(clean_partial, clean_path)
    return split


# ---------------------------------------------------------------- gates


def evaluate_gates(gates: GatesConfig, rows_in: int, rows_quarantined: int, checks: dict[str, int],
                   decoded: np.ndarray) -> list[GateResult]:
    """The batch gates: min rows, quarantine fraction, null rate of the worst key field, duplicate rate."""
    n = max(rows_in, 1)
    undecoded = int((~decoded).sum())
    nulls = {f: checks.get(f"missing:{f}", 0) + checks.get(f"type:{f}", 0) + undecoded for f in KEY_FIELDS}
    worst = max(nulls, key=nulls.get)
    null_rate = nulls[worst] / n
    duplicates = checks.get("duplicate:request_id", 0) + checks.get("duplicate:earlier_batch", 0)
    duplicate_rate = duplicates / n
    quarantined = rows_quarantined / n

    def compared(value: float, limit: float) -> str:
        return "<=" if value <= limit else ">"

    return [
        GateResult(name="min_rows", passed=rows_in >= gates.min_rows, value=rows_in, threshold=gates.min_rows,
                   message=f"gate min_rows: {rows_in} rows in, need at least {gates.min_rows}"),
        GateResult(name="max_quarantine_fraction", passed=quarantined <= gates.max_quarantine_fraction,
                   value=round(quarantined, 6), threshold=gates.max_quarantine_fraction,
                   message=f"gate max_quarantine_fraction: {rows_quarantined} of {rows_in} rows quarantined "
                           f"({quarantined:.2%}) {compared(quarantined, gates.max_quarantine_fraction)} "
                           f"max {gates.max_quarantine_fraction:.2%}"),
        GateResult(name="max_null_rate", passed=null_rate <= gates.max_null_rate, value=round(null_rate, 6),
                   threshold=gates.max_null_rate,
                   message=f"gate max_null_rate: key field {worst} is missing or unreadable in {nulls[worst]} of "
                           f"{rows_in} rows ({null_rate:.2%}) {compared(null_rate, gates.max_null_rate)} "
                           f"max {gates.max_null_rate:.2%}"),
        GateResult(name="max_duplicate_rate", passed=duplicate_rate <= gates.max_duplicate_rate,
                   value=round(duplicate_rate, 6), threshold=gates.max_duplicate_rate,
                   message=f"gate max_duplicate_rate: {duplicates} of {rows_in} rows repeat an earlier request_id "
                           f"({duplicate_rate:.2%}) {compared(duplicate_rate, gates.max_duplicate_rate)} "
                           f"max {gates.max_duplicate_rate:.2%}"),
    ]


# ---------------------------------------------------------------- validate


def validate(snapshot_uri: str | Path, state_dir: str | Path, cfg: ValidateConfig | None = None,
             snapshot_hash: str | None = None, now: str | None = None) -> Validation:
    """Validate the raw snapshot at ``snapshot_uri`` against ``cfg.contract``; see the module docstring.

    ``snapshot_hash`` defaults to the snapshot's file name; ``now`` (ISO, UTC) bounds timestamps (default: now).
    """
    cfg = cfg or ValidateConfig()
    state = Path(state_dir)
    contract = load_contract(cfg.contract)
    pii.patterns(cfg.pii.extra_patterns)  # fail early on a bad extra regex
    snapshot_hash = snapshot_hash or Path(snapshot_uri).name.split(".")[0]
    tag = snapshot_hash[:16]
    seconds: dict[str, float] = {}

    # 1-2. the keys pass (replays, duplicates across the night), then parse-level reasons and the contract's suite
    start = time.perf_counter()
    index = read_row_index(snapshot_uri)
    keys, rows_in = index.keys, len(index.keys)
    seconds["keys"] = time.perf_counter() - start
    start = time.perf_counter()
    verdict = _judge_rows(snapshot_uri, contract, cfg, now, seen_ids.replayed(state, tag, keys), index.later_duplicate)
    seconds["checks"] = time.perf_counter() - start

    # 3-4. quarantine and clean snapshot
    quarantine_path = state / "quarantine" / f"{tag}.jsonl"
    clean_path = state / "snapshots" / f"{tag}.clean.parquet"
    quarantine_dir(state)
    clean_path.parent.mkdir(parents=True, exist_ok=True)
    split = _split_snapshot(snapshot_uri, verdict, cfg, tag, quarantine_path, clean_path, seconds)
    seen_ids.record(state, tag, keys[~verdict.rejected])

    # 5-6. invariant and gates
    rows_quarantined = int(verdict.rejected.sum())
    if split.rows_seen != rows_in or rows_in != split.rows_clean + rows_quarantined:
        raise RuntimeError(f"invariant broken: rows_in={rows_in} != rows_clean={split.rows_clean} + "
                           f"rows_quarantined={rows_quarantined} (snapshot {snapshot_uri})")
    checks = {name: len(rows) for name, rows in sorted(verdict.failed.items())}
    gates = evaluate_gates(cfg.gates, rows_in, rows_quarantined, checks, verdict.decoded)
    report_path = state / "reports" / f"validation-{tag}.json"
    validation = Validation(
        snapshot_hash=snapshot_hash, contract=cfg.contract, rows_in=rows_in, rows_clean=split.rows_clean,
        rows_quarantined=rows_quarantined, clean_uri=str(clean_path), quarantine_uri=str(quarantine_path),
        report_uri=str(report_path), report_html_uri=str(report_path.with_suffix(".html")), checks=checks,
        pii=split.pii, gates=gates, passed=all(g.passed for g in gates),
        seconds={phase: round(s, 3) for phase, s in seconds.items()},
    )
    write_report(validation, _report_examples(split.examples, cfg), snapshot_uri)
    if not validation.passed:
        raise GateFailed("validate: batch gate failed: " + "; ".join(g.message for g in gates if not g.passed),
                         validation)
    return validation


@task(name="validate_snapshot")
def validate_snapshot(observation: Observation, cfg: ValidateConfig, state_dir: str | Path) -> Validation:
    """Enforce the contract on the observed snapshot; raises ``GateFailed`` (naming the gate) to stop the flow."""
    if not observation.new_data or observation.snapshot_uri is None:
        raise ValueError(f"validate_snapshot: nothing to validate ({observation.message})")
    return validate(observation.snapshot_uri, state_dir, cfg, snapshot_hash=observation.snapshot_hash)
