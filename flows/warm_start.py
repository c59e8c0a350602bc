"""Day-0 warm start as plain functions (no Prefect): the base model and the SFT/RFT champion.

* ``build_base``: ``model.base: tiny`` builds the tiny Llama offline from the logs (tokenizer trained on the texts,
  the base fitted to the logged chats so it speaks the format and copies numbers, as a pretrained model would); any
  other value is a Hugging Face id or local path, used as is.
* ``good_examples``: rejection sampling from production — the logged answers whose signals say they worked
  (``resolved`` true, or thumbs up where ``resolved`` is missing; never an escalated one).
* ``train_warm_start``: LoRA SFT (``models/sft.py``) on those examples: the day-0 champion and the RFT baseline.

The bootstrap flow and ``benchmarks/bench_efficacy.py`` share these, so the benchmark measures what the demo ships.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Example = tuple[list[dict], str]  # (prompt messages, completion)


def rows_from_snapshot(path: str | Path) -> list[dict]:
    """Rows of a clean snapshot (Parquet, ``flywheel.schema`` columns) as dicts with ``messages`` parsed."""
    import pandas as pd

    df = pd.read_parquet(path)
    rows = df.to_dict("records")
    for r in rows:
        if isinstance(r.get("messages"), str):
            r["messages"] = json.loads(r["messages"])
    return rows


def is_good(row: dict) -> bool:
    """Production signals say this answer worked: resolved (or, without resolved, thumbs up) and not escalated."""
    def val(key: str) -> Any:
        v = row.get(key)
        if v is None and isinstance(row.get("feedback"), dict):
            v = row["feedback"].get(key)
        try:
            import pandas as pd

            if v is pd.NA or (isinstance(v, float) and v != v):
                return None
        except ImportError:  # pragma: no cover
            pass
        return v

    if val("escalated") is True:
        return False
    resolved = val("resolved")
    if resolved is not None:
        return bool(resolved)
    thumbs = val("thumbs")
    return thumbs is not None and thumbs > 0


def all_examples(rows: Iterable[dict]) -> list[Example]:
    return [(r["messages"], r["completion"]) for r in rows]


def good_examples(rows: Iterable[dict]) -> list[Example]:
    return [(r["messages"], r["completion"]) for r in rows if is_good(r)]


def build_base(out_dir: str | Path, rows: list[dict], tiny: Any = None, *, seed: int = 0,
               progress: bool = False) -> Path:
    """Build the tiny base in ``out_dir`` from the logged chats (idempotent: an existing base is reused).

    The tokenizer sees every text; the model (``tiny``: ``flywheel.config.TinyBaseConfig``, defaults if None) is
    fitted to every logged (chat, answer) for ``tiny.fit_steps`` steps with the numbers renumbered at random
    (``models.tiny.fit_chats``): a base that speaks the format and copies numbers, but answers like production did,
    mistakes included. Which answers to prefer is left to SFT/RFT and PPO."""
    from flywheel.config import TinyBaseConfig
    from models.tiny import build_tiny_model

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    tiny = tiny or TinyBaseConfig()
    texts = [m.get("content") or "" for r in rows for m in r["messages"]] + [r["completion"] for r in rows]
    return build_tiny_model(
        out, texts, vocab_size=tiny.vocab_size, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
        num_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size, pretrain_chats=all_examples(rows),
        pretrain_steps=tiny.fit_steps, pretrain_lr=tiny.fit_learning_rate, pretrain_batch_size=tiny.fit_batch_size,
        progress=progress, seed=seed)


def resolve_base(model_base: str, state_dir: str | Path) -> Path | str:
    """Where the configured base lives: ``tiny`` = ``<state>/models/tiny-base``; else the id/path as given."""
    return Path(state_dir) / "models" / "tiny-base" if model_base == "tiny" else model_base


def train_warm_start(base: str | Path, examples: list[Example], out_dir: str | Path, *, epochs: int = 3,
                     seed: int = 0, learning_rate: float | None = None, lora_r: int | None = None,
                     progress: bool = False, logger=None) -> Any:
    """LoRA SFT of ``base`` on ``examples`` into ``out_dir``; returns ``models.sft.SFTResult``."""
    from models.sft import SFTConfig, train_sft

    cfg = SFTConfig(seed=seed, epochs=epochs, progress=progress)
    if learning_rate is not None:
        cfg.learning_rate = learning_rate
    if lora_r is not None:
        cfg.lora_r, cfg.lora_alpha = lora_r, 2 * lora_r
    return train_sft(cfg, base, examples, out_dir, logger=logger, device="cpu")
