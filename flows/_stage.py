"""How the flows run a stage: Prefect options shared by every task call, failures that name the stage.

* run names carry the night (``train-2026-11-25``);
* results persist under ``<state>/prefect-results`` (a LocalFileSystem block saved per state dir, as Prefect 3 wants
  result storage registered server-side), so a rerun of the same night finds them;
* the cache key of a stage is a hash of its inputs (upstream records, the config, the night) and of the task's
  source code, so rerunning a night skips every stage that finished and resumes at the one that failed, while a
  code change recomputes the stages it touched; ``refresh=True`` recomputes everything;
* retries stay as each task declares them (only stages that do I/O against flaky services retry, never training);
* any exception leaves the task as ``StageFailed("stage <name> failed: <reason>")`` so the flow run's message says
  where it broke;
* observe is the one stage whose rerun is not idempotent: once commit has merged the night's objects into the
  manifest, observing again finds "no new data". So the flow writes the night's observation to
  ``<state>/nights/<flow>-<day>.observation.json`` before commit (``remember_observation``) and a rerun resumes with it
  (``committed_observation``) even when Prefect's cached result is gone: a changed ``tasks/observe.py`` (new cache
  key), a result file cut short by a kill mid-write (Prefect reads it as a miss) or ``refresh=True``. Without it such a
  rerun skipped the night: its rows were marked read and never scored or trained on.

Test hook: with ``FLYWHEEL_TEST_STOP_AFTER_STAGE=<stage>`` in its environment the process stops itself (SIGSTOP)
right after that stage's result is persisted, so a test can SIGKILL it exactly at the stage boundary
(``tests/reliability/test_night_kill.py``). Never set it in production: the process waits for a signal forever.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

STOP_AFTER_ENV = "FLYWHEEL_TEST_STOP_AFTER_STAGE"


class StageFailed(RuntimeError):
    """A stage of the nightly flow failed; ``stage`` names it, the message says why."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"stage {stage} failed: {reason}")
        self.stage = stage
        self.reason = reason


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", by_alias=True)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "get_secret_value"):
        return "<secret>"
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else repr(obj)


def digest(*objs: Any) -> str:
    """Stable short hash of records/configs (pydantic models, dataclasses, dicts, paths)."""
    blob = json.dumps([_jsonable(o) for o in objs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Night:
    """What every stage call of one flow run shares."""

    day: str
    state: Path
    config_digest: str
    refresh: bool = False
    storage: Any = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each task call, engine included
    run_seconds: dict[str, float] = field(default_factory=dict)  # time the task's own function ran (0 = cache hit)
    cached: dict[str, bool] = field(default_factory=dict)

    def ensure_storage(self) -> None:
        """Register ``<state>/prefect-results`` as this state dir's result storage block (idempotent)."""
        from prefect.filesystems import LocalFileSystem

        path = (self.state / "prefect-results").resolve()
        path.mkdir(parents=True, exist_ok=True)
        block = LocalFileSystem(basepath=str(path))
        block.save(f"flywheel-results-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}", overwrite=True)
        self.storage = block


def _configured(night: Night, name: str, task: Any, run_name: str) -> Any:
    """``task`` with the night's options: run name, persisted result, a cache key of its inputs and source."""
    source = task_source_digest(task)

    def cache_key(_ctx: Any, params: dict[str, Any]) -> str:
        return f"{name}-{night.day}-{digest(night.config_digest, source, params)}"

    return task.with_options(task_run_name=run_name, persist_result=True, result_storage=night.storage,
                             cache_key_fn=cache_key, refresh_cache=night.refresh)


def _finished(night: Night, name: str, states: list[Any], inner: list[float]) -> None:
    """Record whether stage ``name`` was all cached and how long its own code ran; the test hook (module docstring)
    freezes the process at this stage boundary."""
    night.cached[name] = bool(states) and all(getattr(state, "name", "") == "Cached" for state in states)
    night.run_seconds[name] = round(sum(inner), 3)
    if os.environ.get(STOP_AFTER_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def run_stage(night: Night, name: str, task: Any, *args: Any, **kwargs: Any) -> Any:
    """Call Prefect ``task`` for stage ``name`` with the night's options; raise StageFailed naming the stage."""
    configured = _configured(night, name, task, f"{name}-{night.day}")
    inner: list[float] = []
    configured.fn = _timed(configured.fn, inner)
    t0 = time.perf_counter()
    try:
        state = configured(*args, return_state=True, **kwargs)
        result = state.result(raise_on_failure=True)
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(name, f"{type(e).__name__}: {e}") from e
    finally:
        night.seconds[name] = round(time.perf_counter() - t0, 3)
    _finished(night, name, [state], inner)
    return result


def run_parts(night: Night, name: str, task: Any, count: int, *args: Any) -> list[Any]:
    """``task(*args, index)`` for every index < ``count``, as stage ``name`` (task runs ``<name>-<day>-<index>``).

    Under a distributed task runner (Dask, Ray: ``flow.with_options(task_runner=...)``) the calls are mapped, all
    at once, onto its workers; under the default thread runner they run one after the other, so memory holds one
    part at a time. Each call's result persists with a cache key of its inputs, as ``run_stage``'s.
    """
    from prefect.context import get_run_context
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.utilities.annotations import unmapped

    configured = _configured(night, name, task, f"{name}-{night.day}-{{index}}")
    inner: list[float] = []
    configured.fn = _timed(configured.fn, inner)  # only calls in this process are counted (0 on remote workers)
    t0 = time.perf_counter()
    try:
        if isinstance(get_run_context().task_runner, ThreadPoolTaskRunner):
            states = [configured(*args, k, return_state=True) for k in range(count)]
            results = [state.result(raise_on_failure=True) for state in states]
        else:
            futures = configured.map(*[unmapped(a) for a in args], list(range(count)))
            results = futures.result()
            states = [f.state for f in futures]
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(name, f"{type(e).__name__}: {e}") from e
    finally:
        night.seconds[name] = round(time.perf_counter() - t0, 3)
    _finished(night, name, states, inner)
    return results


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    """``fn`` that records how long its body ran (the stage's own work, without Prefect's engine around it)."""
    import functools

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - t0)
    return timed


def task_source_digest(task: Any) -> str:
    """Hash of the source of the module that defines ``task`` (its logic lives there), as Prefect's TASK_SOURCE."""
    import inspect
    import sys

    module = sys.modules.get(task.fn.__module__)
    try:
        text = inspect.getsource(module) if module is not None else inspect.getsource(task.fn)
    except (OSError, TypeError):
        text = task.fn.__qualname__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _observation_file(night: Night, flow: str) -> Path:
    return night.state / "nights" / f"{flow}-{night.day}.observation.json"


def remember_observation(night: Night, observation: Any, flow: str = "nightly") -> Path:
    """Write the observation this night is about to commit (atomically), for ``committed_observation``."""
    path = _observation_file(night, flow)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(observation.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


def committed_observation(night: Night, observation: Any, flow: str = "nightly",
                          log: Callable[[str], None] | None = None) -> Any:
    """The observation an earlier run of this night committed (or was about to), else ``observation``.

    Reusing it keeps the later stages' cache keys, so the rerun resumes where the killed run stopped. Raises
    ``StageFailed`` if that observation's snapshot is gone (its objects are in the manifest: they cannot be read
    again without editing it).
    """
    path = _observation_file(night, flow)
    if not path.is_file():
        return observation
    saved = type(observation).model_validate_json(path.read_text())
    if saved.snapshot_uri and not Path(saved.snapshot_uri).is_file():
        raise StageFailed("observe", f"{path}: an earlier run of night {night.day} committed snapshot "
                                     f"{saved.snapshot_uri}, which is gone; its objects are marked read in the "
                                     "manifest, so restore the snapshot or remove them from the manifest")
    if log is not None and (saved.snapshot_hash, saved.new_data) != (observation.snapshot_hash, observation.new_data):
        log(f"night {night.day}: an earlier run committed snapshot {saved.snapshot_hash} ({saved.rows} rows; {path});"
            f" resuming with it (observe now says: {observation.message})")
    return saved


def night_of(day: str | None, timezone: str) -> str:
    """The night's date (YYYY-MM-DD): ``day`` if given (validated), else today in the schedule's timezone."""
    if day:
        try:
            return dt.date.fromisoformat(day).isoformat()
        except ValueError:
            raise StageFailed("flow", f"day: expected YYYY-MM-DD, got {day!r}") from None
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(timezone)).date().isoformat()


def load_flow_config(config_path: str | None, overrides: dict[str, Any] | None) -> Any:
    """The flow's FlywheelConfig (errors name the key path, as StageFailed("config", ...))."""
    from flywheel.config import load_config

    return run_glue("config", load_config, config_path or None, overrides or {})


def run_glue(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run plain (non-task) glue with the same failure convention."""
    try:
        return fn(*args, **kwargs)
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(name, f"{type(e).__name__}: {e}") from e
