"""Gold accuracy of an adapter on held-out demo prompts: the honest measure, outside the pipeline.

Only the demo and the efficacy benchmark use it: production has no gold answers. The pipeline itself never reads
``<logs>/_gold``; this module does, after the fact, to show whether the rewards led the policy to the truth.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from flywheel import demo_data


def heldout_gold(logs_dir: str | Path, day: str, fraction: float, max_prompts: int | None = None) -> list[dict]:
    """The newest ``fraction`` of ``day``'s requests (by time), defects excluded: the time split the pipeline holds out."""
    rows = [g for g in demo_data.load_gold(logs_dir, [day]) if not g.get("defect")]
    rows.sort(key=lambda g: g["request_id"])  # request ids are numbered in timestamp order within a day
    keep = rows[int(len(rows) * (1 - fraction)):]
    return keep[-max_prompts:] if max_prompts else keep


def fresh_gold(n: int, seed: int) -> list[dict]:
    """``n`` new prompts from the generator (phrasings and ids the logs may not contain) with their gold answers."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages, intent, order_id = demo_data.make_prompt(rng)
        out.append({"messages": messages, "intent": intent, "order_id": order_id,
                    "completion": demo_data.gold_completion(intent, order_id)})
    return out


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, 100 * (centre - half)), 2), round(min(100.0, 100 * (centre + half)), 2))


def paired_gain_ci(hits_a: list[bool], hits_b: list[bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % paired-bootstrap interval of accuracy(b) - accuracy(a), in points, over the same prompts."""
    if len(hits_a) != len(hits_b) or not hits_a:
        raise ValueError(f"paired_gain_ci: need two equal, non-empty hit lists; got {len(hits_a)} and {len(hits_b)}")
    rng = random.Random(seed)
    d = [int(b) - int(a) for a, b in zip(hits_a, hits_b)]
    n = len(d)
    gains = sorted(100 * sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (round(gains[int(0.025 * n_boot)], 2), round(gains[int(0.975 * n_boot) - 1], 2))


def generate(base_dir: str | Path, adapter_dir: str | Path | None, prompts: list[list[dict]],
             max_new_tokens: int = 40, batch_size: int = 64) -> list[str]:
    """Greedy answers of base (+ adapter) to chat ``prompts``."""
    import torch
    from peft import PeftModel

    from models.policy import load_base

    model, tok = load_base(base_dir, device="cpu")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    out: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[i:i + batch_size]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [o.strip() for o in out]


def gold_accuracy(base_dir: str | Path, adapter_dir: str | Path | None, gold: list[dict],
                  max_new_tokens: int = 40) -> dict:
    """Accuracy (0-100) with a 95 % CI, overall and per intent."""
    answers = generate(base_dir, adapter_dir, [g["messages"] for g in gold], max_new_tokens)
    hits = [demo_data.is_correct(a, g["intent"], g["order_id"]) for a, g in zip(answers, gold)]
    per_intent = {}
    for intent in demo_data.INTENTS:
        idx = [i for i, g in enumerate(gold) if g["intent"] == intent]
        if idx:
            per_intent[intent] = round(100 * sum(hits[i] for i in idx) / len(idx), 1)
    k, n = sum(hits), len(hits)
    return {"accuracy": round(100 * k / max(n, 1), 2), "ci": wilson_ci(k, n), "n": n, "per_intent": per_intent,
            "hits": hits,
            "examples": [{"answer": a, "gold": g["completion"]} for a, g in list(zip(answers, gold))[:3]]}
