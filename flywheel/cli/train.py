"""CLI commands of the train area: build the tiny offline base model, run PPO on a scored snapshot."""
from __future__ import annotations

from pathlib import Path

import typer

from flywheel.cli.app import app


@app.command("make-tiny-model")
def make_tiny_model(
    out: Path = typer.Option(..., "--out", help="Folder to write the model and tokenizer to."),
    corpus: Path = typer.Option(..., "--corpus", help="JSONL logs (file or folder, .jsonl/.jsonl.gz) or a text file."),
    vocab_size: int = typer.Option(1024, help="BPE vocabulary size (digits are always single tokens)."),
    hidden_size: int = typer.Option(192, help="Model width."),
    layers: int = typer.Option(4, help="Decoder layers."),
    heads: int = typer.Option(4, help="Attention heads."),
    pretrain_epochs: int = typer.Option(0, help="Epochs of next-token training on the corpus texts (0 = random init)."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Build a tiny Llama + BPE tokenizer (chat template, pad != EOS, left padding) loadable with the Auto classes."""
    if not corpus.exists():
        typer.echo(f"--corpus: {corpus} does not exist", err=True)
        raise typer.Exit(1)
    from models.tiny import build_tiny_model, read_corpus

    try:
        texts = read_corpus(corpus)
    except (ValueError, UnicodeDecodeError) as e:
        typer.echo(f"--corpus: {e}", err=True)
        raise typer.Exit(1) from None
    if hidden_size % heads:
        typer.echo(f"--hidden-size {hidden_size} must be a multiple of --heads {heads}", err=True)
        raise typer.Exit(1)
    path = build_tiny_model(out, texts, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers,
                            num_heads=heads, pretrain_epochs=pretrain_epochs, seed=seed)
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    typer.echo(f"tiny model: {n / 1e6:.2f}M parameters, {len(texts)} corpus texts -> {path}")


@app.command("train")
def train(
    scored: Path = typer.Option(..., "--scored", help="Scored snapshot (Parquet written by `flywheel score`)."),
    spec: Path = typer.Option(..., "--spec", help="Its reward spec JSON (spec-<hash>.json written by `flywheel "
                                                  "score`)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (defaults if omitted)."),
    init_adapter: Path | None = typer.Option(None, "--init-adapter", help="Start from this LoRA (default: the "
                                                                          "registry champion)."),
    steps: int | None = typer.Option(None, "--steps", help="Override train.steps."),
) -> None:
    """PPO of a LoRA candidate on the snapshot's prompts with the online reward; prints the candidate record."""
    from flywheel.base_model import base_model_of
    from flywheel.config import ConfigError, load_config
    from tasks.score import scores_from_files
    from tasks.train import run_train

    for flag, path in (("--scored", scored), ("--spec", spec)):
        if not path.is_file():
            typer.echo(f"{flag}: {path} is not a file", err=True)
            raise typer.Exit(1)
    try:
        cfg = load_config(config, {"train.steps": steps})
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    scores = scores_from_files(scored, spec)
    base = base_model_of(cfg) if init_adapter is not None else None
    result = run_train(cfg, scores, init_adapter=str(init_adapter) if init_adapter else None, base_model=base)
    typer.echo(result.model_dump_json(indent=2))
