"""The bad-input corpus through the real observe + validate code: no crash, no silent drop, a reason per defect.

Two nights are ingested once for the module (observe -> validate -> commit, as the nightly flow does, without
Prefect): night 1 holds one object (or a few) per defect kind, night 2 replays a row of night 1. Each defect kind is
then checked on its own objects: every row is accounted for (clean + quarantined = rows it holds, or the object
quarantined whole), the bad lines carry the reason naming the defect, and every valid row comes out clean, unchanged.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import corpus  # tests/reliability/corpus.py (pytest puts this folder on sys.path)
import orjson
import pyarrow.parquet as pq
import pytest

from flywheel import logparse
from flywheel.config.data import GatesConfig, SourceConfig, ValidateConfig
from flywheel.logformats import UnreadableObject
from flywheel.sources import LocalSource, ObjectRef
from tasks import observe as observe_stage
from tasks.observe import commit_manifest, load_manifest, manifest_path, observe
from tasks.validate import validate

DEFECTS = corpus.build()
BY_KIND = {d.kind: d for d in DEFECTS}
OPEN_GATES = ValidateConfig(gates=GatesConfig(max_quarantine_fraction=1.0, max_null_rate=1.0, max_duplicate_rate=1.0))


class HostileSource(LocalSource):
    """The local folder plus keys no folder can hold (``..``, absolute paths), as an S3 listing could return."""

    def __init__(self, root: Path, listed: list[str]):
        super().__init__(root)
        self.listed = listed

    def list(self) -> list[ObjectRef]:
        extra = [ObjectRef(key, f"etag-{i}", 100) for i, key in enumerate(self.listed)]
        return sorted(super().list() + extra, key=lambda r: r.key)

    def read(self, ref: ObjectRef) -> bytes:
        assert ref.key not in self.listed, f"observe read the unsafe key {ref.key!r}"
        return super().read(ref)


@dataclass
class Night:
    observation: object
    validation: object
    raw_rows: dict[str, int]               # object -> rows in the raw snapshot
    clean: dict[str, dict]                 # request_id -> clean row (night's clean snapshot)
    clean_by_object: dict[str, int]
    quarantined: dict[tuple[str, int], list[str]]  # (object, line) -> reasons
    objects: dict[str, str]                # object -> reason, for objects quarantined whole


def _run_night(source: Path, state: Path, listed: list[str], night: int) -> Night:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(observe_stage, "open_source", lambda cfg: HostileSource(Path(cfg.uri), listed))
        obs = observe(SourceConfig(uri=str(source)), state)
    val = validate(obs.snapshot_uri, state, OPEN_GATES, snapshot_hash=obs.snapshot_hash, now=corpus.NOW[night])
    commit_manifest(obs, state)
    raw = pq.read_table(obs.snapshot_uri, columns=["source_object"])["source_object"].to_pylist()
    clean_rows = pq.read_table(val.clean_uri).to_pylist()
    quarantine = [orjson.loads(x) for x in Path(val.quarantine_uri).read_bytes().splitlines()]
    objects = {}
    if obs.object_quarantine_uri:
        lines = Path(obs.object_quarantine_uri).read_bytes().splitlines()
        objects = {r["source_object"]: r["reason"] for r in map(orjson.loads, lines)}
    return Night(obs, val, {k: raw.count(k) for k in set(raw)}, {r["request_id"]: r for r in clean_rows},
                 {k: [r["source_object"] for r in clean_rows].count(k) for k in set(raw)},
                 {(q["source_object"], q["source_line"]): q["reasons"] for q in quarantine}, objects)


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict[int, Night]:
    root = tmp_path_factory.mktemp("corpus")
    source, state, outside = root / "logs", root / "state", root / "outside"
    done = {}
    umask = os.umask(0o022)  # the usual default: files would be world-readable without the quarantine's own modes
    try:
        for night in (1, 2):
            listed = corpus.write_night(DEFECTS, night, source, outside)
            done[night] = _run_night(source, state, listed, night)
    finally:
        os.umask(umask)
    done["manifest"] = load_manifest(manifest_path(state, str(source)))["objects"]
    done["state"] = state
    return done


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_defect_kind(kind, nights):
    d = BY_KIND[kind]
    night = nights[d.night]
    seen = {**nights[1].clean, **nights[2].clean}
    for key in d.all_keys():
        where = nights[2] if key in d.objects and d.night == 2 else nights[1]
        rows = where.raw_rows.get(key, 0)
        quarantined = sorted(line for (obj, line) in where.quarantined if obj == key)
        if d.expect == "object":                           # quarantined whole, with its reason; never rows
            assert key in where.objects, (key, where.objects)
            assert where.objects[key].startswith(f"unreadable_object: {d.reason}"), where.objects[key]
            assert rows == 0
            continue
        assert key not in where.objects, where.objects.get(key)
        assert rows == d.rows[key], f"{key}: {rows} rows read, the object holds {d.rows[key]}"
        assert where.clean_by_object.get(key, 0) + len(quarantined) == rows      # no silent drop
        assert quarantined == sorted(line for obj, line in d.bad if obj == key)  # valid rows are not quarantined
        if d.expect == "empty":
            assert nights["manifest"][key]["status"] == "empty" and "empty objects" in where.observation.message
    for key, line in d.bad:
        assert d.reason in night.quarantined[(key, line)], (key, line, night.quarantined[(key, line)])
    for request_id, completion in d.clean.items():         # every valid row kept, unchanged
        assert request_id in seen, f"valid row {request_id} was not kept"
        assert seen[request_id]["completion"] == completion


def test_no_row_is_lost_and_every_kind_is_tried(nights):
    assert len(DEFECTS) >= 30
    assert {d.expect for d in DEFECTS} == {"quarantine", "keep", "object", "empty"}
    for n in (1, 2):
        obs, val = nights[n].observation, nights[n].validation
        assert obs.rows == val.rows_in == val.rows_clean + val.rows_quarantined
        expected_rows = sum(rows for d in DEFECTS for key, rows in d.rows.items()
                            if (d.night == n and key in d.objects) or (n == 1 and key in d.earlier))
        assert val.rows_in == expected_rows
        objects = [key for d in DEFECTS if d.expect == "object" and d.night == n for key in d.all_keys()]
        assert sorted(nights[n].objects) == sorted(objects) and obs.objects_quarantined == len(objects)
    assert all(m["status"] in ("read", "empty", "quarantined") for m in nights["manifest"].values())


def test_quarantine_keeps_raw_rows_owner_only(nights):
    folder = nights["state"] / "quarantine"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert {f.name.split("-")[0] for f in files} >= {"objects"} and len(files) >= 3  # rows + objects, both nights
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    rows = [orjson.loads(x) for x in Path(nights[1].validation.quarantine_uri).read_bytes().splitlines()]
    assert rows and all(r["raw"] for r in rows)  # the raw line, for forensics


def test_rows_replayed_on_a_later_night_count_in_the_duplicate_gate(nights):
    val = nights[2].validation
    assert val.checks == {"duplicate:earlier_batch": 1}
    duplicate_gate = next(g for g in val.gates if g.name == "max_duplicate_rate")
    assert duplicate_gate.value == pytest.approx(1 / val.rows_in, abs=1e-6)


@pytest.mark.parametrize("d", [d for d in DEFECTS if d.objects and d.expect != "object"], ids=lambda d: d.kind)
def test_fast_path_and_per_line_path_agree(d, monkeypatch):
    for key, data in d.objects.items():
        fast = logparse.parse_object(key, data, corpus.DAY1)
        monkeypatch.setattr(logparse, "FAST_PATH", False)
        slow = logparse.parse_object(key, data, corpus.DAY1)
        monkeypatch.setattr(logparse, "FAST_PATH", True)
        assert fast.sort_by("source_line").equals(slow.sort_by("source_line")) or (
            fast.sort_by("source_line").to_pylist() == slow.sort_by("source_line").to_pylist()), key


def test_unreadable_objects_name_their_reason():
    for d in DEFECTS:
        if d.expect == "object" and d.objects:
            for key, data in d.objects.items():
                with pytest.raises(UnreadableObject, match=f"^{d.reason}"):
                    logparse.parse_object(key, data, corpus.DAY1)
