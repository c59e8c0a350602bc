"""A night killed mid-flow at each stage boundary (issue #13): SIGKILL of the flow process, then the same night again.

The night runs as the real command (``flywheel run --config … --day D``) in a subprocess of its own session, against a
real ``prefect server`` of this module, on the demo's fast sizes (tiny model, 240 log rows a day, day 0 bootstrapped
once by ``flywheel bootstrap``). Exactness at the boundary comes from the test hook of ``flows/_stage.py``:
``FLYWHEEL_TEST_STOP_AFTER_STAGE=<stage>`` makes the process stop itself (SIGSTOP) right after that stage's result is
persisted; the test then SIGKILLs the process group from outside, as an OOM killer or a lost node would.

To keep the runtime sane the boundaries are chained on one state dir: run 1 is killed after observe, run 2 (the rerun)
must resume at validate and is killed after it, … run 7 is killed after promote and run 8 completes the night. Each
rerun is thus the rerun of a night killed at one boundary, and the end state is compared with one uninterrupted run
of the same night from the same day-0 state (same paths: the state dir is restored from a copy in place).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from prefect_server import prefect_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "flywheel")
# observe is three tasks (flows/ingest.py): the plan, the parts read (one task each), the joined snapshot
OBSERVE = ("observe", "observe-read", "observe-assemble")
STAGES = (*OBSERVE, "validate", "commit", "score", "train", "evaluate", "promote", "deploy")
BOUNDARIES = STAGES[:-1]  # killed after each of these; the last stage has no boundary after it inside the night
RUN_DEADLINE_S = 300.0
STOP_ENV = "FLYWHEEL_TEST_STOP_AFTER_STAGE"  # flows/_stage.py: STOP_AFTER_ENV
MODEL = "support-bot"
# a stage's task run is '<stage>-<day>' ('<stage>-<day>-<part>' for the parts observe reads)
TASK_LINE = re.compile(r"Task run '(?P<stage>[a-z_-]+?)-(?P<day>\d{4}-\d\d-\d\d)(?:-\d+)?' - Finished in state "
                       r"(?P<state>\w+)\(")


# ---------------------------------------------------------------------------------------------------- processes
def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of process group ``pgid``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


def _kill_group(proc: subprocess.Popen) -> list[str]:
    """SIGKILL ``proc``'s process group, reap it; returns the command lines of anything still alive after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while (left := _group(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [" ".join(p.cmdline())[:120] for p in left]


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    """A real ``prefect server start`` (own PREFECT_HOME) for every night of this module; the env the runs get."""
    home = tmp_path_factory.mktemp("prefect") / "home"
    with prefect_server(home) as api:
        env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PYTHONUNBUFFERED="1")
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        env.pop(STOP_ENV, None)
        yield env


@dataclass
class Run:
    """One ``flywheel run`` of the night: how it ended, what Prefect logged per stage, the state dir afterwards."""

    name: str
    returncode: int | None
    states: dict[str, str]  # stage -> Prefect's final state name in this run's log (Completed, Cached, ...)
    fp: dict = field(default_factory=dict)  # state fingerprint after the run (see ``fingerprint``)
    record: dict | None = None  # the NightRecord the command printed (completed runs only)
    left_behind: list[str] = field(default_factory=list)


@dataclass
class Night:
    """The module's day-0 state and the night to run on it."""

    root: Path
    config: Path
    state: Path
    template: Path
    day: str
    env: dict

    def restore(self) -> None:
        """Put the day-0 state back at the same path (records name absolute paths, so runs stay comparable)."""
        shutil.rmtree(self.state)
        shutil.copytree(self.template, self.state, symlinks=True)

    def run(self, name: str, stop_after: str | None = None) -> Run:
        """``flywheel run`` of the night; with ``stop_after``, SIGKILL its group once it stopped after that stage."""
        env = dict(self.env, **({STOP_ENV: stop_after} if stop_after else {}))
        out, err = self.root / f"{name}.out", self.root / f"{name}.err"
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen([CLI, "run", "--config", str(self.config), "--day", self.day], env=env,
                                    stdout=o, stderr=e, cwd=REPO, start_new_session=True)
        left: list[str] = []
        try:
            if stop_after is None:
                proc.wait(timeout=RUN_DEADLINE_S)
            else:
                _wait_stopped(proc, stop_after, err)
        finally:
            left = _kill_group(proc)
        run = Run(name=name, returncode=proc.returncode, states=_stage_states(err.read_text(), self.day),
                  left_behind=left)
        if stop_after is None:
            assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{err.read_text()[-3000:]}"
            run.record = json.loads(out.read_text())
        run.fp = fingerprint(self.state, self.day)
        return run


def _wait_stopped(proc: subprocess.Popen, stage: str, err: Path) -> None:
    deadline = time.monotonic() + RUN_DEADLINE_S
    while True:
        assert proc.poll() is None, f"exit {proc.returncode} before stopping after {stage}:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not stopped after {stage} within {RUN_DEADLINE_S:.0f} s"
        try:
            if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
                return
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)


def _stage_states(log: str, day: str) -> dict[str, str]:
    return {m["stage"]: m["state"] for m in TASK_LINE.finditer(log) if m["day"] == day}


# ---------------------------------------------------------------------------------------------------- state
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path, pattern: str = "*") -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(folder.glob(pattern)) if p.is_file()} if folder.is_dir() else {}


def fingerprint(state: Path, day: str) -> dict:
    """What a rerun must not redo or duplicate: stage results, manifest, snapshots, ids, quarantine, training runs,
    registry versions and aliases."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    results = state / "prefect-results"
    manifest = next((state / "manifest").glob("[0-9a-f]*.json"))
    # a copy under a new name: MLflow keeps one SQLAlchemy engine per URI, which would go on reading the file a
    # restore() replaced
    db = state.parent / f"mlflow-{time.time_ns()}.db"
    for part in state.glob("mlflow.db*"):  # with a journal, should a kill ever land mid-write
        shutil.copyfile(part, db.with_name(db.name + part.name[len("mlflow.db"):]))
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    candidates = sorted(p for p in (state / "models" / "candidates").glob("*") if p.is_dir())
    return {
        "results": {p.name.split(f"-{day}-")[0]: (_sha(p), p.stat().st_mtime_ns)
                    for p in results.glob(f"*-{day}-*")},
        "manifest": json.loads(manifest.read_text())["objects"],
        "pending": sorted(p.name for p in (state / "manifest").glob("pending-*")),
        # raw and clean snapshots are named by content; a scored one by the reward spec, which names the reward
        # model's folder (timestamped): compare those by rows
        "snapshots": {**_files(state / "raw"),
                      **{k: v for k, v in _files(state / "snapshots").items() if ".scored-" not in k}},
        "scored_rows": sorted(pq.read_metadata(p).num_rows for p in (state / "snapshots").glob("*.scored-*")),
        "ids": _files(state / "ids"),
        "quarantine": _files(state / "quarantine"),
        "candidates": {p.name: len((p / "metrics.jsonl").read_text().splitlines()) if (p / "metrics.jsonl").is_file()
                       else None for p in candidates},
        "train_runs": sorted(r.info.run_id for r in runs if r.data.tags.get("stage") == "train"),
        "train_prompts": sorted(r.data.params.get("prompts") for r in runs if r.data.tags.get("stage") == "train"),
        "runs": sorted(r.info.run_id for r in runs),
        "versions": [(int(v.version), v.tags.get("decision"), v.run_id) for v in versions],
        "aliases": {a: int(v) for a, v in client.get_registered_model(MODEL).aliases.items()},
    }


# ---------------------------------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def night(prefect_env, tmp_path_factory) -> Night:
    """Demo logs of two days (fast sizes), day 0 bootstrapped by ``flywheel bootstrap``, day 1 arrived: the template."""
    from demo import get_task
    from demo.logs import generate_logs
    from demo.run import FAST, demo_config, write_config

    root = tmp_path_factory.mktemp("night-kill")
    task = get_task("support_triage")
    days = generate_logs(task, root / "generated", days=2, rows_per_day=FAST["rows_per_day"], seed=0).days
    (root / "logs").mkdir()
    shutil.copytree(root / "generated" / f"dt={days[0]}", root / "logs" / f"dt={days[0]}")
    config = write_config(root, demo_config(root, task, FAST, seed=0))
    boot = subprocess.run([CLI, "bootstrap", "--config", str(config), "--day", days[0]], env=prefect_env, cwd=REPO,
                          capture_output=True, text=True, timeout=RUN_DEADLINE_S)
    assert boot.returncode == 0, boot.stderr[-3000:]
    shutil.copytree(root / "generated" / f"dt={days[1]}", root / "logs" / f"dt={days[1]}")
    state = root / "state"
    shutil.copytree(state, root / "template", symlinks=True)
    return Night(root=root, config=config, state=state, template=root / "template", day=days[1], env=prefect_env)


@pytest.fixture(scope="module")
def day0(night) -> dict:
    return fingerprint(night.template, night.day)


@pytest.fixture(scope="module")
def reference(night, day0) -> Run:
    """The same night uninterrupted, from the day-0 state; the state is put back afterwards."""
    run = night.run("reference")
    night.restore()
    return run


@pytest.fixture(scope="module")
def chain(night, reference) -> list[Run]:
    """Run i is killed right after stage BOUNDARIES[i] (and is the rerun of run i-1); the last run completes."""
    runs = [night.run(f"killed-after-{stage}", stop_after=stage) for stage in BOUNDARIES]
    runs.append(night.run("completed"))
    return runs


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("stage", BOUNDARIES)
def test_killed_after_a_stage_the_rerun_resumes_at_the_next(chain, stage):
    """Killed exactly after ``stage``: its result (and every earlier one) is persisted, nothing later is; the rerun
    reuses them all (Prefect logs them Cached, their result files are byte for byte and mtime unchanged) and runs the
    next stage itself."""
    i = BOUNDARIES.index(stage)
    killed, rerun = chain[i], chain[i + 1]
    assert killed.returncode == -signal.SIGKILL and not killed.left_behind, killed
    assert set(killed.fp["results"]) == set(STAGES[:i + 1]), "the kill landed exactly at the boundary"
    assert killed.states.get(stage) == "Completed", killed.states
    for done in STAGES[:i + 1]:
        assert rerun.states.get(done) == "Cached", (done, rerun.states)
        assert rerun.fp["results"][done] == killed.fp["results"][done], f"{done} was recomputed"
    assert rerun.states.get(STAGES[i + 1]) == "Completed", rerun.states  # resumed at the next stage, which ran
    if rerun.record is not None:
        assert rerun.record["cached"] == {s: s in STAGES[:i + 1] for s in STAGES}
        assert all(rerun.record["stage_run_seconds"][s] == 0 for s in STAGES[:i + 1])


def test_the_killed_runs_side_effects_stop_at_the_boundary(chain, day0):
    """What each killed run left: the manifest moves only at commit (killed before it, the objects stay unread for the
    rerun; their pending entries exist from the joined snapshot on), training runs only at train, a registry version
    only at promote."""
    for stage, killed in zip(BOUNDARIES, chain, strict=False):
        p = killed.fp
        new_objects = set(p["manifest"]) - set(day0["manifest"])
        after = BOUNDARIES.index(stage)
        committed = after >= STAGES.index("commit")
        assert bool(new_objects) == committed, (stage, new_objects)
        observed = after >= STAGES.index("observe-assemble")  # the pending manifest entries are written there
        assert bool(p["pending"]) == (observed and not committed), (stage, p["pending"])
        assert len(p["train_runs"]) == len(day0["train_runs"]) + (after >= STAGES.index("train")), stage
        assert len(p["versions"]) == len(day0["versions"]) + (after >= STAGES.index("promote")), stage


def test_no_row_is_read_twice(chain, reference, day0):
    """After seven kills the night read what the uninterrupted run read, once: the same manifest entries, snapshots,
    seen-id files and quarantine files, byte for byte, and the same row counts."""
    final, ref = chain[-1].fp, reference.fp
    assert final["manifest"] == ref["manifest"]
    new = {k: v for k, v in final["manifest"].items() if k not in day0["manifest"]}
    tags = {v["snapshot"] for v in new.values()}  # the manifest names the snapshot by its hash's prefix
    assert len(tags) == 1 and chain[-1].record["snapshot_hash"].startswith(tags.pop())
    assert final["snapshots"] == ref["snapshots"], "a second snapshot (a re-read) or a changed one"
    assert final["scored_rows"] == ref["scored_rows"] == [chain[-1].record["rows_clean"]], "scored once, every row"
    assert final["ids"] == ref["ids"] and len(final["ids"]) == len(day0["ids"]) + 1
    assert final["quarantine"] == ref["quarantine"], "rows quarantined twice or differently"
    assert final["pending"] == []
    for key in ("rows_in", "rows_clean", "rows_quarantined", "snapshot_hash", "feedback_joined"):
        assert chain[-1].record[key] == reference.record[key], key
    rec = chain[-1].record
    assert rec["rows_in"] == rec["rows_clean"] + rec["rows_quarantined"] > 0


def test_no_row_is_trained_on_twice(chain, reference, day0, night):
    """One training run for the night (one MLflow run, one candidate folder with one metrics row per PPO update) and
    the same reward curve as the uninterrupted run."""
    final = chain[-1].fp
    new_runs = set(final["train_runs"]) - set(day0["train_runs"])
    assert len(new_runs) == 1, final["train_runs"]
    steps = int(_config(night)["train"]["steps"])
    assert list(final["candidates"].values()) == list(reference.fp["candidates"].values()) == [steps]
    assert final["train_prompts"] == reference.fp["train_prompts"] and len(final["train_prompts"]) == 1
    assert chain[-1].record["train_run_id"] in new_runs
    assert chain[-1].record["reward_curve"] == reference.record["reward_curve"] and len(
        chain[-1].record["reward_curve"]) == steps


def test_one_version_is_registered_and_the_aliases_match_the_uninterrupted_run(chain, reference, day0):
    final, ref = chain[-1].fp, reference.fp
    new = [v for v in final["versions"] if v not in day0["versions"]]
    assert len(new) == 1, final["versions"]
    assert [v[:2] for v in final["versions"]] == [v[:2] for v in ref["versions"]]
    assert final["aliases"] == ref["aliases"]
    rec = chain[-1].record
    assert rec["candidate_version"] == str(new[0][0]) and rec["decision"] == new[0][1] == reference.record["decision"]
    if rec["promoted"]:
        assert final["aliases"]["champion"] == new[0][0]


def test_the_resumed_night_reports_what_the_uninterrupted_one_did(chain, reference):
    rec, ref = chain[-1].record, reference.record
    for key in ("status", "champion_reward", "candidate_reward", "gain", "decision", "promoted", "champion_version",
                "candidate_version", "base_model", "gates", "reward_curve", "rows_in"):
        assert rec[key] == ref[key], key
    assert ref["cached"] == {s: False for s in STAGES}


def _config(night: Night) -> dict:
    import yaml

    return yaml.safe_load(night.config.read_text())


# ------------------------------------------------------------------------- persisted results lost (after the chain)
def _cut_result(night: Night, stage: str) -> None:
    """Cut ``stage``'s persisted result short, as a kill during Prefect's (non-atomic) result write leaves it."""
    (path,) = (night.state / "prefect-results").glob(f"{stage}-{night.day}-*")
    path.write_bytes(path.read_bytes()[:300])


UNCHANGED = ("manifest", "pending", "snapshots", "scored_rows", "ids", "quarantine", "candidates", "train_runs",
             "versions", "aliases")


def test_a_night_whose_observe_result_is_lost_after_commit_resumes_with_its_committed_snapshot(night, chain):
    """Observe's cached result unreadable after commit (cut short; a changed tasks/observe.py or refresh do the same):
    observe runs again and finds the night's objects already read. Before the fix the rerun then reported "skipped:
    no new logs" and the committed rows were never scored or trained on; now the flow resumes with the observation it
    wrote before commit, so every later stage is reused and nothing is read, trained or registered again."""
    _cut_result(night, "observe")
    again = night.run("observe-result-lost")
    rec, final = again.record, chain[-1].record
    assert rec["status"] == "completed", rec["reason"]
    # the plan finds nothing new now, so reading and joining its (no) parts are new tasks too
    assert again.states["observe"] == "Completed" and rec["cached"] == {s: s not in OBSERVE for s in STAGES}
    for key in ("rows_in", "rows_clean", "snapshot_hash", "candidate_version", "decision", "candidate_reward"):
        assert rec[key] == final[key], key
    for key in UNCHANGED:
        assert again.fp[key] == chain[-1].fp[key], key
    assert "resuming with it" in (night.root / "observe-result-lost.err").read_text()
    assert not again.left_behind


def test_a_night_whose_promote_result_is_lost_registers_no_second_version(night, chain):
    """Promote's cached result unreadable (a kill while Prefect wrote it, after the registry had decided the version):
    promote runs again and finds the version this promotion registered (``flywheel/registry.py``:
    ``_registered_before``); the night still holds one version, the same aliases, the same decision. Before that fix
    the rerun registered the candidate a second time (v3, decision repeated)."""
    before = fingerprint(night.state, night.day)
    _cut_result(night, "promote")
    again = night.run("promote-result-lost")
    assert again.states["promote"] == "Completed", again.states
    assert again.fp["versions"] == before["versions"], "a second version registered for the night"
    assert again.fp["aliases"] == before["aliases"]
    for key in ("candidate_version", "decision", "champion_version"):
        assert again.record[key] == chain[-1].record[key], key
    assert not again.left_behind
