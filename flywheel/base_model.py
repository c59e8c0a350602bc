"""Which base model a run uses, and the offline tiny stand-in for a pretrained one.

``model.base: tiny`` builds a tiny Llama offline from the logs (tokenizer trained on the texts, the base fitted to
the logged chats so it speaks the format and copies numbers, as a pretrained model would) in
``<state>/models/tiny-base``; any other value is a Hugging Face id or local path, used as is.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.snapshots import all_examples

if TYPE_CHECKING:
    from flywheel.config import FlywheelConfig, TinyBaseConfig


def resolve_base(model_base: str, state_dir: str | Path) -> Path | str:
    """Where the configured base lives: ``tiny`` = ``<state>/models/tiny-base``; else the id/path as given."""
    return Path(state_dir) / "models" / "tiny-base" if model_base == "tiny" else model_base


def base_model_of(cfg: FlywheelConfig, champion_base: str | None = None) -> str:
    """The base a run loads: the champion's ``base_model`` lineage tag if it has one, else ``model.base``."""
    return champion_base or str(resolve_base(cfg.model.base, cfg.state))


def build_base(out_dir: str | Path, rows: list[dict], tiny: TinyBaseConfig | None = None, *, seed: int = 0,
               progress: bool = False) -> Path:
    """Build the tiny base in ``out_dir`` from the logged chats (idempotent: an existing base is reused).

    The tokenizer sees every text; the model is fitted to every logged (chat, answer) for ``tiny.fit_steps`` steps
    with the numbers renumbered at random (``models.tiny.fit_chats``): a base that speaks the format and copies
    numbers, but answers like production did, mistakes included. Which answers to prefer is left to SFT and PPO.
    """
    from flywheel.config import TinyBaseConfig
    from models.tiny import build_tiny_model

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    tiny = tiny or TinyBaseConfig()
    texts = [m.get("content") or "" for r in rows for m in r["messages"]] + [r["completion"] for r in rows]
    return build_tiny_model(
        out, texts, vocab_size=tiny.vocab_size, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
        num_heads=tiny.num_heads, intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_positions, pretrain_chats=all_examples(rows),
        pretrain_steps=tiny.fit_steps, pretrain_lr=tiny.fit_learning_rate, pretrain_batch_size=tiny.fit_batch_size,
        progress=progress, seed=seed)
