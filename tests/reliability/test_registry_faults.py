"""Registry faults: a real ``mlflow server`` (SQLite backend, proxied artifacts) SIGKILLed inside a promotion.

The promote stage (``tasks.promote.promote_candidate`` → ``flywheel.registry.promote``) runs for real. Each kill point
is a hook around the MLflow client call the registry is about to make (or has just made): one promotion per point,
each in its own thread and registered model, waits there; when all wait, the server is SIGKILLed once (one restart
for the whole module, as a restart costs ~10-30 s on 2 cores). After the kill: the promotion fails with
``RegistryUnavailable`` naming the step, no alias names an unfinished version or one whose stored artifacts differ
from the adapter it was registered from, and the champion is still the old one (or, killed after the champion moved,
the new one, complete). With the server restarted on the same backend the promotion is rerun (as the stage's retry
does): it completes (champion = new version, ``previous`` = old champion, a rollback walks back) and a version the
crash left is ``abandoned`` with no alias: one usable version per promotion.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
    "release_fixtures", Path(__file__).resolve().parents[1] / "release" / "conftest.py")
_release = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_release)
adapters = _release.adapters  # four random LoRA folders (session fixture of tests/release)

UNUSABLE = ("pending", "promoting", "abandoned")


class MlflowServer:
    """``mlflow server`` in its own process group on a fixed port and backend, so it can be killed and restarted."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _release.free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"

    def start(self) -> None:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--artifacts-destination", str(self.artifacts), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _release.wait_http(f"{self.url}/health", 120, self.proc)

    def kill(self) -> None:
        """SIGKILL the whole group (server and its workers) and wait until the port refuses connections."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"port {self.port} still answers after SIGKILL of the MLflow server group")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_faults"))
    with pytest.MonkeyPatch.context() as mp:  # a dead server fails a call at once instead of after minutes of retries
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        srv.start()
        try:
            yield srv
        finally:
            srv.kill()


def _cfg(server, state: Path, name: str):
    from flywheel.config import load_config

    return load_config(None, overrides={"project.state_dir": str(state), "registry.tracking_uri": server.url,
                                        "registry.model_name": name})


def _records(registry, adapter: Path, champion: int, tmp: Path):
    """The train stage's Candidate and the evaluate stage's Evaluation, its run holding the reports already."""
    from flywheel.records import Candidate, Decision, Evaluation, Lineage

    run_id = registry.client.create_run(registry.experiment_id(), run_name="evaluate").info.run_id
    for name in ("report.json", "report.html"):
        (tmp / name).write_text("{}" if name.endswith("json") else "<html></html>")
        registry.client.log_artifact(run_id, str(tmp / name), "evaluation")
    lineage = Lineage(snapshot_hash="snap", reward_spec_hash="spec", base_model="tiny-base", validation_report="v",
                      code_revision="test")
    cand = Candidate(scored_uri="scored.parquet", spec_hash="spec", lineage=lineage, adapter_uri=str(adapter),
                     value_uri=None, base_model="tiny-base", init_adapter=None, champion_version=champion,
                     run_id=None, steps=1, reward_start=0.0, reward_end=0.0, kl_end=0.0, seconds=0.0, prompts=1,
                     metrics_uri="metrics.jsonl")
    ev = Evaluation(candidate_uri=str(adapter), champion_version=champion, report_json="report.json",
                    report_html="report.html", run_id=run_id, passed=True,
                    decision=Decision(passed=True, gates=[], reason="gates passed"), summary={"gain": 0.1})
    return cand, ev


def _setup(server, tmp: Path, name: str, adapters: list[Path]):
    """A registry whose champion v1 is ``adapters[0]``, and the records promoting ``adapters[1]``."""
    from flywheel.records import Lineage
    from flywheel.registry import Registry

    cfg = _cfg(server, tmp / "state", name)
    registry = Registry.from_config(cfg)
    day0 = registry.release(adapters[0], passed=True, reason="day 0", evaluated_champion=None,
                            lineage=Lineage(base_model="tiny-base", code_revision="test"))
    assert day0.champion_version == 1
    return cfg, registry, *_records(registry, adapters[1], 1, tmp)


def _stored_files(registry, version: int, dst: Path) -> dict[str, bytes]:
    """The files of ``version``'s adapter as MLflow serves them (downloaded without our fetch and its checks)."""
    import mlflow

    source = registry.client.get_model_version(registry.model_name, str(version)).source
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                     tracking_uri=registry.tracking_uri))
    return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def assert_no_alias_on_an_unusable_version(registry, by_version, tmp: Path) -> dict:
    """Every alias names a decided version whose stored adapter is, byte for byte, the one it was registered from
    (``promoting`` only on the champion: stopped after the champion moved, before the last tag)."""
    st = registry.state()
    for alias, version in st["aliases"].items():
        if version is None:
            continue
        decision = st["versions"][version]["decision"]
        assert decision not in UNUSABLE or (decision, alias) == ("promoting", "champion"), (alias, version, st)
        got = _stored_files(registry, version, tmp / f"check-{alias}-{version}-{time.monotonic_ns()}")
        assert got == _files(by_version(version)), f"{alias} -> v{version}: stored artifacts incomplete"
    return st


def assert_completed(registry, rel, new_adapter: Path, tmp: Path) -> None:
    """Champion = the new version, previous = v1 (its parent), one usable version of the new adapter, the rest
    abandoned and unaliased; a rollback walks back to v1."""
    st = registry.state()
    assert rel.decision == "promoted" and rel.champion_version == rel.version and rel.previous_version == 1, rel
    assert st["aliases"] == {"champion": rel.version, "challenger": rel.version, "previous": 1}, st
    usable = [v for v, info in st["versions"].items() if v > 1 and info["decision"] not in UNUSABLE]
    assert usable == [rel.version], st
    for v, info in st["versions"].items():
        assert info["decision"] in ("promoted", "abandoned"), (v, st)
        if info["decision"] == "abandoned":
            assert v not in st["aliases"].values()
    assert registry.tags(rel.version)["parent_champion_version"] == "1"
    assert _stored_files(registry, rel.version, tmp / "final") == _files(new_adapter)
    assert registry.rollback(reason="check").champion_version == 1


# kill point -> (MLflow method, kill before or after it, which call, the step the error names, champion after)
KILL_POINTS = {
    "midway_through_the_adapter_upload": ("log_artifact", "before", lambda n, a: a[1:2] == ("adapter",) and n == 2,
                                          "uploading the adapter and reports", 1),
    "before_the_version_is_created": ("create_model_version", "before", lambda n, a: True,
                                      "registering the version", 1),
    "after_the_version_is_created": ("create_model_version", "after", lambda n, a: True, "deciding v2", 1),
    "before_any_alias_moves": ("set_registered_model_alias", "before", lambda n, a: a[1] == "previous",
                               "moving the aliases to v2", 1),
    "between_previous_and_champion": ("set_registered_model_alias", "before", lambda n, a: a[1] == "champion",
                                      "moving the aliases to v2", 1),
    "after_champion_moved": ("set_registered_model_alias", "after", lambda n, a: a[1] == "champion",
                             "moving the aliases to v2", 2),
    "rollback_between_champion_and_previous": ("set_model_version_tag", "before", lambda n, a: a[2] == "rolled_back",
                                               "", 2),
}


def install_kill_hooks(mp: pytest.MonkeyPatch, server: MlflowServer, arrived: threading.Barrier,
                       killed: threading.Event) -> dict[str, int]:
    """Wrap the MLflow methods of ``KILL_POINTS``: in the thread named after a kill point, the matching call waits
    (before or after running) at ``arrived`` until the main thread has SIGKILLed the server (``killed``)."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.tracking import MlflowClient

    calls: dict[str, int] = {}
    for method in {m for m, *_ in KILL_POINTS.values()}:
        cls = HttpArtifactRepository if method == "log_artifact" else MlflowClient

        def hooked(self, *args, _method=method, _original=getattr(cls, method), **kwargs):
            point = threading.current_thread().name
            hit = False
            if point in KILL_POINTS and KILL_POINTS[point][0] == _method and point not in calls.get("fired", ()):
                calls[point] = calls.get(point, 0) + 1
                hit = KILL_POINTS[point][2](calls[point], args)
            if hit:
                calls.setdefault("fired", []).append(point)
            if hit and KILL_POINTS[point][1] == "before":
                arrived.wait(120)
                killed.wait(120)
            out = _original(self, *args, **kwargs)
            if hit and KILL_POINTS[point][1] == "after":
                arrived.wait(120)
                killed.wait(120)
            return out

        mp.setattr(cls, method, hooked)
    return calls


@pytest.fixture(scope="module")
def killed_once(server, adapters, tmp_path_factory):
    """Every kill point at once: one promotion (or rollback) per point, each in its own thread and registered model,
    all waiting at their point when the server is SIGKILLed; then the server restarted on the same backend.
    Returns {point: (cfg, registry, candidate, evaluation, the exception the promotion raised)}."""
    from flywheel.records import Lineage
    from tasks.promote import promote_candidate

    cases = {point: _setup(server, tmp_path_factory.mktemp(point), f"faults-{point}", adapters)
             for point in KILL_POINTS}
    _, registry, _, _ = cases["rollback_between_champion_and_previous"]
    for i, evaluated in ((1, 1), (2, 2)):  # history v1 -> v2 -> v3, to be rolled back to v2
        registry.release(adapters[i], passed=True, reason="test", evaluated_champion=evaluated,
                         lineage=Lineage(base_model="tiny-base", code_revision="test"))
    assert registry.state()["aliases"] == {"champion": 3, "challenger": 3, "previous": 2}
    errors: dict[str, BaseException | None] = dict.fromkeys(KILL_POINTS)

    def run(point: str) -> None:
        cfg, registry, cand, ev = cases[point]
        try:
            if point.startswith("rollback"):
                registry.rollback(reason="smoke test failed", expected_champion=3)
            else:
                promote_candidate.fn(cfg, cand, ev)
        except BaseException as e:  # noqa: BLE001  (checked by the tests)
            errors[point] = e

    arrived, killed = threading.Barrier(len(KILL_POINTS) + 1), threading.Event()
    with pytest.MonkeyPatch.context() as mp:
        calls = install_kill_hooks(mp, server, arrived, killed)
        threads = [threading.Thread(target=run, args=(p,), name=p, daemon=True) for p in KILL_POINTS]
        for t in threads:
            t.start()
        try:
            arrived.wait(120)  # every thread is at its kill point
        finally:
            server.kill()
            killed.set()
        for t in threads:
            t.join(120)
    assert sorted(calls["fired"]) == sorted(KILL_POINTS) and not server.alive
    server.start()  # same backend and artifact store
    return {point: (*cases[point], errors[point]) for point in KILL_POINTS}


PROMOTION_POINTS = [p for p in KILL_POINTS if not p.startswith("rollback")]


@pytest.mark.parametrize("point", PROMOTION_POINTS)
def test_server_killed_inside_a_promotion_never_leaves_a_half_state(point, killed_once, server, adapters, tmp_path):
    from flywheel.registry import RegistryUnavailable
    from tasks.promote import promote_candidate

    _, _, _, step, champion_after = KILL_POINTS[point]
    cfg, registry, cand, ev, error = killed_once[point]
    by_version = {1: adapters[0]}
    assert isinstance(error, RegistryUnavailable), error
    msg = str(error)
    assert f"MLflow at {server.url} failed while {step}" in msg and "rerun it" in msg, msg

    st = assert_no_alias_on_an_unusable_version(registry, lambda v: by_version.get(v, adapters[1]), tmp_path)
    assert st["aliases"]["champion"] == champion_after, st

    rel = promote_candidate.fn(cfg, cand, ev)  # the stage's retry
    assert_no_alias_on_an_unusable_version(registry, lambda v: by_version.get(v, adapters[1]), tmp_path)
    assert_completed(registry, rel, adapters[1], tmp_path)
    if point == "after_champion_moved":  # the stopped attempt had finished: no second version
        assert rel.version == 2 and "completed" in rel.reason and max(st["versions"]) == 2
    if point == "between_previous_and_champion":
        assert st["aliases"]["previous"] == 1 and "'previous' named the champion v1" in rel.reason
    if point in ("after_the_version_is_created", "before_any_alias_moves", "between_previous_and_champion"):
        assert registry.state()["versions"][2]["decision"] == "abandoned" and rel.version == 3


def test_an_artifact_cut_short_in_the_store_is_never_aliased(server, adapters, tmp_path):
    """A partial upload (the server lost mid-file) leaves the weights shorter than the adapter's: the version is
    rejected, gets no alias, the champion stays; the rerun uploads again and completes."""
    from mlflow.tracking import MlflowClient

    from tasks.promote import promote_candidate

    cfg, registry, cand, ev = _setup(server, tmp_path, "faults-cut-short", adapters)
    original = MlflowClient.log_artifacts

    def cut_short(self, run_id, local_dir, artifact_path=None):
        original(self, run_id, local_dir, artifact_path)
        stored = next(server.artifacts.glob(f"**/{run_id}/artifacts/adapter/adapter_model.safetensors"))
        stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MlflowClient, "log_artifacts", cut_short)
        rel = promote_candidate.fn(cfg, cand, ev)
    assert rel.decision == "rejected" and "adapter/adapter_model.safetensors (" in rel.reason, rel
    assert "bytes)" in rel.reason and rel.champion_version == 1
    st = assert_no_alias_on_an_unusable_version(registry, lambda v: adapters[0] if v == 1 else adapters[1], tmp_path)
    assert st["aliases"] == {"champion": 1, "challenger": 1, "previous": None}, st  # v2 got no alias
    cand2, ev2 = _records(registry, adapters[1], 1, tmp_path)  # the next night's evaluation of the same adapter
    rel = promote_candidate.fn(cfg, cand2, ev2)
    assert rel.decision == "promoted" and rel.version == 3 and rel.previous_version == 1


def test_a_changed_adapter_in_the_artifact_store_is_refused_on_fetch(server, adapters, tmp_path):
    """Bytes changed in the store after registration (same size): fetching the champion fails naming the file."""
    cfg, registry, _, _ = _setup(server, tmp_path, "faults-bit-rot", adapters)
    run_id = registry.client.get_model_version(registry.model_name, "1").run_id
    stored = next(server.artifacts.glob(f"**/{run_id}/artifacts/adapter/adapter_model.safetensors"))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"v1: the adapter in the artifact store .* adapter_model\.safetensors"):
        registry.fetch("champion", tmp_path / "fetched")


def test_server_killed_inside_a_rollback_is_repaired_by_the_next_operation(killed_once):
    """Killed after ``champion`` went back, before ``previous`` followed: previous == champion until the next
    promotion or rollback puts it back to the champion's parent (history v1 → v2 → v3, rolled back to v2)."""
    from flywheel.registry import PromotionError, RegistryUnavailable

    _, registry, _, _, error = killed_once["rollback_between_champion_and_previous"]
    assert isinstance(error, RegistryUnavailable) and "rollback of 'faults-rollback_" in str(error), error
    assert registry.state()["aliases"] == {"champion": 2, "challenger": 3, "previous": 2}  # the stopped state
    with pytest.raises(PromotionError, match="champion is v2, not v3"):  # the retry: already rolled back
        registry.rollback(reason="smoke test failed", expected_champion=3)
    assert registry.state()["aliases"] == {"champion": 2, "challenger": 3, "previous": 1}  # repaired
    assert registry.rollback(reason="walk back").champion_version == 1


def test_a_promotion_rerun_after_it_decided_registers_no_second_version(server, adapters, tmp_path):
    """The promote stage's result lost after the registry had decided (a kill while Prefect wrote it): the rerun of
    the same promotion (same evaluation run, same adapter) returns that version; nothing is registered again."""
    from tasks.promote import promote_candidate

    cfg, registry, cand, ev = _setup(server, tmp_path, "faults-result-lost", adapters)
    first = promote_candidate.fn(cfg, cand, ev)
    again = promote_candidate.fn(cfg, cand, ev)
    assert (first.decision, first.version, again.decision, again.version) == ("promoted", 2, "promoted", 2)
    assert "not registered again" in again.reason and again.previous_version == 1
    assert sorted(registry.state()["versions"]) == [1, 2]
