"""LoRA supervised fine-tuning on chosen completions, loss on the assistant tokens only.

Used for the day-0 champion (SFT on what production did well) and as the rejection-sampling fine-tuning (RFT)
baseline that PPO must beat. The completion is followed by EOS so the model learns to stop.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict

from models.policy import load_base, lora_config, position_ids_from_mask, save_lora
from models.rollout import render_prompts


@dataclass
class SFTConfig:
    seed: int = 0  # shuffling and LoRA init
    epochs: int = 3  # passes over the examples
    batch_size: int = 16  # sequences per optimizer step
    learning_rate: float = 2e-3  # AdamW learning rate (cosine decay after 5 % warm-up)
    max_len: int = 512  # sequences are left-truncated to this many tokens
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA alpha
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    progress: bool = True  # rich progress bar


@dataclass
class SFTResult:
    adapter_dir: str  # LoRA folder for PeftModel.from_pretrained
    losses: list[float]  # mean assistant-token loss per epoch
    examples: int


def tokenize_examples(tokenizer, examples: list[tuple[list[dict], str]], max_len: int) -> list[tuple[list[int], int]]:
    """(prompt messages, completion) → (token ids, number of prompt tokens); completion + EOS are the targets."""
    out = []
    for text, (_, completion) in zip(render_prompts(tokenizer, [p for p, _ in examples]), examples):
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + answer)[-max_len:]
        out.append((ids, max(0, len(ids) - len(answer))))
    return out


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids (B, L), mask (B, L), labels (B, L) with -100 on padding and prompt tokens."""
    width = max(len(ids) for ids, _ in batch)
    ids_t = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        off = width - len(ids)
        ids_t[i, off:] = torch.tensor(ids)
        mask[i, off:] = 1
        labels[i, off + n_prompt:] = torch.tensor(ids[n_prompt:])
    return ids_t, mask, labels


def train_sft(config: SFTConfig, base: str | Path, examples: list[tuple[list[dict], str]], out_dir: str | Path, *,
              init_adapter: str | Path | None = None, logger: Callable[[dict, int], None] | None = None,
              dtype: str = "float32", device: str = "auto") -> SFTResult:
    """Fit a LoRA adapter (new, or continuing ``init_adapter``) to ``examples``; saves it to ``out_dir``."""
    if not examples:
        raise ValueError("examples: empty, SFT needs at least one (prompt, completion) pair")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    lm, tokenizer = load_base(base, dtype, device)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(lm, str(init_adapter), is_trainable=True)
    else:
        model = get_peft_model(lm, lora_config(config.lora_r, config.lora_alpha, config.lora_target_modules))
    params = [p for p in model.parameters() if p.requires_grad]
    data = tokenize_examples(tokenizer, examples, config.max_len)
    n_steps = config.epochs * math.ceil(len(data) / config.batch_size)
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    warm = max(1, n_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / n_steps))))
    losses, step = [], 0
    device_ = next(model.parameters()).device
    bar = _bar(config.progress, n_steps)
    model.train()
    for epoch in range(config.epochs):
        rng.shuffle(data)
        total, count = 0.0, 0
        for i in range(0, len(data), config.batch_size):
            ids, mask, labels = (t.to(device_) for t in collate(data[i:i + config.batch_size], tokenizer.pad_token_id))
            loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                         labels=labels, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            total, count = total + loss.item() * len(ids), count + len(ids)
            if logger is not None:
                logger({"sft/loss": loss.item(), "sft/lr": sched.get_last_lr()[0]}, step)
            if bar:
                bar[0].update(bar[1], advance=1, description=f"SFT epoch {epoch + 1} loss {loss.item():.3f}")
        losses.append(total / count)
    if bar:
        bar[0].stop()
    model.eval()
    out = Path(out_dir)
    name = model.active_adapter
    save_lora(out, model.peft_config[name],
              {k: v.detach() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()})
    (out / "sft_config.json").write_text(json.dumps({**asdict(config), "examples": len(data), "losses": losses}))
    return SFTResult(str(out), losses, len(data))


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress
    progress = Progress()
    progress.start()
    return progress, progress.add_task("SFT", total=total)
