"""Bootstrap stage (day 0): build (or resolve) the base, SFT it on what production did well, register the champion.

``model.base: tiny`` builds the tiny Llama offline from the clean logs (``flywheel.base_model``); any other value is
a Hugging Face id or local path, used as is. The warm start is rejection sampling from production: LoRA SFT
(``models/sft.py``) on the logged answers marked resolved (thumbs up where resolved is missing, never escalated).
It becomes registry version 1, the champion every nightly candidate starts from. ``train_warm_start`` is the plain
SFT the benchmarks share, so they measure what the demo ships.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.records import Release, Validation, WarmStart
from flywheel.registry import Registry
from flywheel.retries import retry_on_transient_io
from flywheel.snapshots import Example

if TYPE_CHECKING:
    from models.sft import SFTResult


def train_warm_start(base: str | Path, examples: list[Example], out_dir: str | Path, *, epochs: int = 3,
                     seed: int = 0, learning_rate: float | None = None, lora_r: int | None = None,
                     progress: bool = False, logger: Callable[[dict, int], None] | None = None) -> SFTResult:
    """LoRA SFT of ``base`` on ``examples`` (prompt messages, completion) into ``out_dir``, on the CPU."""
    from models.sft import SFTConfig, train_sft

    config = SFTConfig(seed=seed, epochs=epochs, progress=progress)
    if learning_rate is not None:
        config.learning_rate = learning_rate
    if lora_r is not None:
        config.lora_r, config.lora_alpha = lora_r, 2 * lora_r
    return train_sft(config, base, examples, out_dir, logger=logger, device="cpu")


def existing_champion(cfg: FlywheelConfig) -> tuple[int, str] | None:
    """(version, local adapter folder) of the registry's champion, or None before day 0."""
    registry = Registry.from_config(cfg)
    champ = registry.champion()
    if champ is None:
        return None
    version, folder = registry.fetch(champ.version)
    return version, str(folder)




@task(name="build_base_model")
def build_base_model(cfg: FlywheelConfig, clean: Validation) -> str:
    """``model.base: tiny`` → build the tiny Llama offline from the clean logs (once per state dir); else the
    configured Hugging Face id or local path."""
    from flywheel.base_model import build_base, resolve_base
    from flywheel.snapshots import rows_from_snapshot

    target = resolve_base(cfg.model.base, cfg.state)
    if cfg.model.base != "tiny":
        return str(target)
    return str(build_base(target, rows_from_snapshot(clean.clean_uri), cfg.model.tiny, seed=cfg.train.seed,
                          progress=True).resolve())


def read_transcripts(folder: str | Path) -> list[dict]:
    """The rows (one per model call) of a folder of agent transcripts, ``dt=*/**.jsonl``; a line that is not a JSON
    object with ``messages`` and ``completion`` is an error naming the file and line."""
    import json

    files = sorted(Path(folder).glob("dt=*/*.jsonl"))
    if not files:
        raise ValueError(f"agent.transcripts: no dt=YYYY-MM-DD/*.jsonl under {folder}")
    rows = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or "completion" not in row:
                raise ValueError(f"{path}:{number}: an agent transcript row needs messages (list) and completion")
            rows.append(row)
    return rows


@task(name="build_agent_base")
def build_agent_base(cfg: FlywheelConfig) -> str:
    """The agent's base: ``model.base: tiny`` → the tiny base fitted on ``agent.transcripts`` (once per state dir,
    at least 1,024 positions for multi-turn chats); else the configured Hugging Face id or local path."""
    from flywheel.base_model import build_base

    if cfg.model.base != "tiny":
        return cfg.model.base
    if cfg.agent.transcripts is None:
        raise ValueError("agent.transcripts: model.base is 'tiny', so the agent's base is fitted on production "
                         "agent transcripts; set agent.transcripts to their folder")
    tiny = cfg.model.tiny.model_copy(update={"max_positions": max(1024, cfg.model.tiny.max_positions)})
    out = cfg.state / "models" / "agent-base"
    return str(build_base(out, read_transcripts(cfg.agent.transcripts), tiny, seed=cfg.train.seed,
                          progress=True).resolve())


@task(name="sft_warm_start")
def sft_warm_start(cfg: FlywheelConfig, clean: Validation, base_model: str, epochs: int = 4) -> WarmStart:
    """Rejection sampling from production: LoRA SFT on the logged answers marked resolved (thumbs up if no flag)."""
    import mlflow

    from flywheel.snapshots import good_examples, rows_from_snapshot

    rows = rows_from_snapshot(clean.clean_uri)
    examples = good_examples(rows)
    if not examples:
        raise ValueError(f"{clean.clean_uri}: no logged answer is marked good (resolved / thumbs up); "
                         "nothing to warm-start from")
    out = cfg.state / "models" / "warm-start"
    experiment = Registry.from_config(cfg).experiment_id()
    with mlflow.start_run(experiment_id=experiment, run_name="bootstrap-sft") as run:
        mlflow.log_params({"stage": "bootstrap", "base_model": base_model, "examples": len(examples),
                           "rows": len(rows), "epochs": epochs, "snapshot": clean.clean_uri,
                           "snapshot_hash": clean.snapshot_hash})
        result = train_warm_start(base_model, examples, out, epochs=epochs, seed=cfg.train.seed,
                                  logger=lambda m, step: mlflow.log_metrics(m, step=step))
        mlflow.log_metric("sft/final_epoch_loss", result.losses[-1])
    return WarmStart(snapshot_hash=clean.snapshot_hash, validation_report_uri=clean.report_uri, base_model=base_model,
                     adapter_uri=str(Path(result.adapter_dir).resolve()), examples=len(examples), rows=len(rows),
                     losses=result.losses, run_id=run.info.run_id)


@task(name="register_champion", retries=2, retry_delay_seconds=[2, 8], retry_condition_fn=retry_on_transient_io)
def register_champion(cfg: FlywheelConfig, warm: WarmStart) -> Release:
    """Register the warm start (first version, lineage from its record) and give it the ``champion`` alias."""
    return Registry.from_config(cfg).release(
        warm.adapter_uri, passed=True, evaluated_champion=None, lineage=warm.lineage(),
        reason=f"day-0 bootstrap: SFT on {warm.examples} answers production marked good (of {warm.rows} clean rows)",
        summary={"stage": "bootstrap", "examples": warm.examples, "rows": warm.rows}, run_id=warm.run_id,
        require_fresh_evaluation=False)
