"""Four roles on one frozen base model: policy, reference, value and (optionally) reward.

    policy     = base + LoRA "policy"  (+ the frozen warm-start adapter "init", if PPO starts from an SFT/RFT adapter)
    reference  = base + "init" only, or the bare base (adapter disabled): no second copy of the weights
    value      = base + LoRA "value" (+ "init") → scalar head on the last hidden state (only with a critic)
    reward     = base + LoRA "reward" (the rewards stage's reward-model folder) → its scalar head

Switching roles only changes which LoRA adapters are active in each layer (we set the active list directly instead of
peft's ``set_adapter``, which would also flip ``requires_grad`` and confuse DDP). The base weights exist once.

``ActorCritic.forward`` runs the policy and the value pass for one batch — the module DDP wraps. With
``with_value=False`` (critic-free estimators: rloo, grpo) there is no value adapter, no head and no value pass.

``checkpoint_layers()`` turns on activation checkpointing per decoder layer for the passes with gradients: each
layer keeps only its input and recomputes its activations in the backward pass, under the adapters that were active
in the forward (roles are switched by the time ``backward`` runs, so the recompute restores them).
"""
from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.ppo import entropy_from_logits, logprobs_from_logits

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_base(path: str | Path, dtype: str = "float32", device: str = "auto"):
    """Any Hugging Face causal LM (local folder or hub id) + its tokenizer (left padding, pad ≠ EOS), frozen, eval
    mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(resolve_device(device)).eval()  # eval(): dropout off for every role (Huang et al.)
    model.requires_grad_(False)
    return model, tokenizer


def _checkpointed(layer: nn.Module, forward):
    """``forward`` of one decoder layer, checkpointed while gradients are on; the recompute in the backward pass runs
    under the LoRA adapters that were active when the forward ran."""
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        tuners = [m for m in layer.modules() if isinstance(m, BaseTunerLayer)]
        active = [m._active_adapter for m in tuners]

        def replay(*a, **k):
            now = [m._active_adapter for m in tuners]
            for m, adapters in zip(tuners, active):
                m._active_adapter = adapters
            try:
                return forward(*a, **k)
            finally:
                for m, adapters in zip(tuners, now):
                    m._active_adapter = adapters

        return checkpoint(replay, *args, use_reentrant=False, **kwargs)
    return run


def lora_config(r: int = 8, alpha: int = 16, target_modules: list[str] | str = ("q_proj", "v_proj"),
                layers: list[int] | None = None) -> LoraConfig:
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    if targets == ["all-linear"]:  # peft's shorthand for every linear layer but the LM head
        targets = "all-linear"
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                      layers_to_transform=layers, task_type="CAUSAL_LM")


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as ``generate`` computes them. (B, L) → (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ScalarHead(nn.Linear):
    """hidden → 1; saved as ``score_head.safetensors`` with keys ``weight`` (1, hidden) and ``bias`` (1,)."""

    def __init__(self, hidden: int):
        super().__init__(hidden, 1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def save(self, path: Path) -> None:
        save_file({"weight": self.weight.detach().contiguous().cpu(), "bias": self.bias.detach().contiguous().cpu()},
                  str(path))

    def load(self, path: Path) -> None:
        state = load_file(str(path))
        self.weight.data.copy_(state["weight"])
        self.bias.data.copy_(state["bias"])


class ActorCritic(nn.Module):
    """The four roles; trainable parameters are the "policy" adapter and, with a critic, the "value" adapter and
    the value head (``value_head`` is None without one)."""

    def __init__(self, base, *, r: int = 8, alpha: int = 16, target_modules=("q_proj", "v_proj"),
                 init_adapter: str | Path | None = None, value_layers: int | None = None, with_value: bool = True):
        super().__init__()
        cfg = lora_config(r, alpha, target_modules)
        self.has_init = init_adapter is not None
        if self.has_init:  # the warm start stays frozen: it is also the reference policy
            self.lm = PeftModel.from_pretrained(base, str(init_adapter), adapter_name="init", is_trainable=False)
            self.lm.add_adapter("policy", cfg)
        else:
            self.lm = get_peft_model(base, cfg, adapter_name="policy")
        self.with_value = with_value
        self.trunk_layer: int | None = None
        self.value_head: ScalarHead | None = None
        if with_value:
            n_layers = base.config.num_hidden_layers
            layers = None if value_layers is None else list(range(n_layers - value_layers, n_layers))
            # with the value adapter on the top layers only, the value pass can start from the reference pass's
            # hidden state at the first value layer (below it the two roles are the same network): a shorter forward
            if layers and all(hasattr(self.backbone_of(base), a) for a in ("layers", "norm")):
                self.trunk_layer = layers[0]
            self.lm.add_adapter("value", lora_config(r, alpha, target_modules, layers))
            self.value_head = ScalarHead(base.config.hidden_size).to(base.device, base.dtype)
        self.reward_head: ScalarHead | None = None
        self.reward_norm = (0.0, 1.0)
        self._tuner_layers = [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)]
        self._set_trainable()

    def _set_trainable(self) -> None:
        """Train exactly the policy and value adapters (the head is a plain module); everything else is frozen."""
        for name, p in self.lm.named_parameters():
            p.requires_grad_(".policy." in name or ".value." in name)

    # ------------------------------------------------------------------ role switching
    @contextmanager
    def role(self, name: str):
        """Activate the adapters of ``name`` ∈ {policy, reference, value, reward} for the block."""
        init = ["init"] if self.has_init else []
        adapters = {"policy": [*init, "policy"], "reference": init, "value": [*init, "value"],
                    "reward": ["reward"]}[name]
        # no active adapter = the bare base (peft's disable_adapter() would re-run set_adapter on exit, freezing
        # every inactive adapter's parameters)
        previous = [m._active_adapter for m in self._tuner_layers]
        for m in self._tuner_layers:
            m._active_adapter = list(adapters)
        try:
            yield
        finally:
            for m, prev in zip(self._tuner_layers, previous):
                m._active_adapter = prev

    def checkpoint_layers(self) -> None:
        """Activation checkpointing on every decoder layer of the base, for forwards with gradients only (no-grad
        passes and ``generate`` run as before, KV cache included)."""
        layers = getattr(self.backbone, "layers", None)
        if layers is None:
            raise ValueError(f"gradient_checkpointing: {type(self.backbone).__name__} has no `layers` (the decoder "
                             "layers of Llama, Qwen, Gemma and Mistral bases)")
        for layer in layers:
            if not getattr(layer, "_flywheel_checkpointed", False):
                layer.forward = _checkpointed(layer, layer.forward)
                layer._flywheel_checkpointed = True

    @staticmethod
    def backbone_of(base) -> nn.Module:
        return getattr(base, base.base_model_prefix)

    @property
    def backbone(self) -> nn.Module:
        """The transformer without its LM head (hidden states only)."""
        return self.backbone_of(self.lm.get_base_model())

    # ------------------------------------------------------------------ role forwards
    def response_logits(self, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
        """Logits predicting the last ``response_len`` tokens. (B, L) → (B, R, V); LM head only on those positions."""
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), logits_to_keep=response_len + 1,
                      use_cache=False)
        return out.logits[:, :-1]

    def response_hidden(self, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
        """Last hidden states at the response positions: (B, L) → (B, R, H) (state after reading token t)."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        return h[:, -response_len:]

    def ref_logprobs(self, input_ids: Tensor, attention_mask: Tensor, response_len: int,
                     temperature: float = 1.0) -> Tensor:
        """log π_ref of the response tokens. → (B, R)."""
        return self.reference_pass(input_ids, attention_mask, response_len, temperature)[0]

    def reference_pass(self, input_ids: Tensor, attention_mask: Tensor, response_len: int,
                       temperature: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """log π_ref (B, R), and the hidden state entering the first value layer (B, L, H) when the value pass can
        start there (``value_layers`` set), else None."""
        with torch.no_grad(), self.role("reference"):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask), logits_to_keep=response_len + 1,
                          use_cache=False, output_hidden_states=self.trunk_layer is not None)
        trunk = out.hidden_states[self.trunk_layer] if self.trunk_layer is not None else None
        return logprobs_from_logits(out.logits[:, :-1], input_ids[:, -response_len:], temperature), trunk

    def _hidden_from_trunk(self, trunk: Tensor, attention_mask: Tensor) -> Tensor:
        """Run only the top decoder layers (and the final norm) on ``trunk``. (B, L, H) → (B, L, H)."""
        backbone = self.backbone
        layers = backbone.layers
        backbone.layers = layers[self.trunk_layer:]
        try:
            return backbone(inputs_embeds=trunk, attention_mask=attention_mask,
                            position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        finally:
            backbone.layers = layers

    def reward_scores(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Normalised reward-model score of each full sequence, read at its last real token. → (B,)."""
        if self.reward_head is None:
            raise RuntimeError("no reward model attached: call attach_reward_model(folder) first")
        with torch.no_grad(), self.role("reward"):
            h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)  # (B,) last real token
        score = self.reward_head(h[torch.arange(len(h)), last]).squeeze(-1).float()
        mean, std = self.reward_norm
        return (score - mean) / std

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_len: int,
                temperature: float = 1.0, trunk: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Policy and value pass with gradients. → logprobs (B, R), entropy (B, R), values (B, R) or None without a
        critic.

        ``trunk``: the reference pass's hidden state at the first value layer (see ``reference_pass``)."""
        responses = input_ids[:, -response_len:]
        with self.role("policy"):
            logits = self.response_logits(input_ids, attention_mask, response_len)  # (B, R, V)
        logprobs = logprobs_from_logits(logits, responses, temperature)
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach(), temperature)
        if self.value_head is None:
            return logprobs, entropy, None
        with self.role("value"):
            if trunk is not None and self.trunk_layer is not None:
                hidden = self._hidden_from_trunk(trunk, attention_mask)[:, -response_len - 1:-1]  # (B, R, H)
            else:
                hidden = self.response_hidden(input_ids, attention_mask, response_len + 1)[:, :-1]  # (B, R, H)
        values = self.value_head(hidden).squeeze(-1).float()  # (B, R) V(s_t) before emitting token t
        return logprobs, entropy, values

    # ------------------------------------------------------------------ reward model, saving
    def attach_reward_model(self, folder: str | Path, init_value_head: bool = False) -> None:
        """Load the rewards stage's folder (``adapter/``, ``score_head.safetensors``, ``reward_model.json``)."""
        folder = Path(folder)
        meta = json.loads((folder / "reward_model.json").read_text())
        self.lm.load_adapter(str(folder / "adapter"), adapter_name="reward", is_trainable=False)
        self._tuner_layers = [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)]
        base = self.lm.get_base_model()
        self.reward_head = ScalarHead(base.config.hidden_size).to(base.device, base.dtype).requires_grad_(False)
        self.reward_head.load(folder / "score_head.safetensors")
        self._set_trainable()
        norm = meta.get("normalisation") or meta.get("normalization") or {}
        self.reward_norm = (float(norm.get("mean", meta.get("mean", 0.0))),
                            float(norm.get("std", meta.get("std", 1.0))) or 1.0)
        if init_value_head and self.value_head is not None:
            self.value_head.load(folder / "score_head.safetensors")

    def adapter_state(self, name: str) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.lm, adapter_name=name).items()}

    def load_adapter_state(self, name: str, state: dict[str, Tensor]) -> None:
        set_peft_model_state_dict(self.lm, state, adapter_name=name)

    def save_policy(self, path: str | Path, max_rank: int | None = None) -> Path:
        """The policy as ONE LoRA adapter on the original base (warm start and PPO delta concatenated, exact).

        With ``max_rank`` the merged adapter is re-factored to at most that rank (``compress_lora``): exact while
        the update's true rank fits, else its best rank-``max_rank`` approximation — so nightly champions keep a
        rank the server accepts instead of growing by ``lora_r`` every night.
        """
        return save_lora(path, self.lm.peft_config["policy"], self.adapter_state("policy"),
                         (self.lm.peft_config["init"], self.adapter_state("init")) if self.has_init else None,
                         max_rank=max_rank)

    def save_value(self, path: str | Path) -> Path:
        """The value adapter (``adapter/``) and head (``score_head.safetensors``)."""
        if self.value_head is None:
            raise RuntimeError("this ActorCritic has no critic (with_value=False): nothing to save")
        path = Path(path)
        save_lora(path / "adapter", self.lm.peft_config["value"], self.adapter_state("value"))
        self.value_head.save(path / "score_head.safetensors")
        return path


def _scaling(cfg: LoraConfig) -> float:
    return cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)


def compress_lora(a: Tensor, b: Tensor, max_rank: int) -> tuple[Tensor, Tensor]:
    """Re-factor ΔW = B·A into rank ≤ ``max_rank`` factors: exact if rank(ΔW) ≤ max_rank, else the best approximation.

    a: (r, d_in), b: (d_out, r). With B = Q_b R_b and Aᵀ = Q_a R_a (thin QR), ΔW = Q_b (R_b R_aᵀ) Q_aᵀ, so the SVD of
    the small r×r core U S Vᵀ gives ΔW's SVD (Q_b U) S (Q_a V)ᵀ; keeping the top k singular values is the Eckart–Young
    optimum. Returns (a', b') of shapes (k, d_in), (d_out, k) with the singular values split evenly (√S each side).
    """
    k = min(max_rank, a.shape[0])
    if a.shape[0] <= max_rank:
        return a, b
    qb, rb = torch.linalg.qr(b.double())  # (d_out, r), (r, r)
    qa, ra = torch.linalg.qr(a.double().T)  # (d_in, r), (r, r)
    u, sv, vh = torch.linalg.svd(rb @ ra.T)  # (r, r), (r,), (r, r)
    root = sv[:k].sqrt()  # (k,)
    b_new = (qb @ u[:, :k]) * root  # (d_out, k)
    a_new = root[:, None] * (vh[:k] @ qa.T)  # (k, d_in)
    return a_new.to(a.dtype), b_new.to(b.dtype)


def save_lora(path: str | Path, cfg: LoraConfig, state: dict[str, Tensor],
              warm: tuple[LoraConfig, dict[str, Tensor]] | None = None, max_rank: int | None = None) -> Path:
    """Write a peft adapter folder. With ``warm``, ΔW = s₁B₁A₁ + s₂B₂A₂ = [s₁B₁ | s₂B₂]·[A₁; A₂] (rank r₁+r₂, scale 1),
    re-factored to rank ≤ ``max_rank`` when given (``compress_lora``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out_cfg = copy.deepcopy(cfg)
    if warm is not None:
        wcfg, wstate = warm
        r1, r2, s1, s2 = wcfg.r, cfg.r, _scaling(wcfg), _scaling(cfg)
        merged = {}
        for module in sorted(set(_targets(wstate)) | set(_targets(state))):  # zero-fill a module one side lacks
            a1, b1 = wstate.get(f"{module}.lora_A.weight"), wstate.get(f"{module}.lora_B.weight")
            a2, b2 = state.get(f"{module}.lora_A.weight"), state.get(f"{module}.lora_B.weight")
            d_in = (a1 if a1 is not None else a2).shape[1]
            d_out = (b1 if b1 is not None else b2).shape[0]
            a1 = a1 if a1 is not None else torch.zeros(r1, d_in)
            b1 = b1 if b1 is not None else torch.zeros(d_out, r1)
            a2 = a2 if a2 is not None else torch.zeros(r2, d_in)
            b2 = b2 if b2 is not None else torch.zeros(d_out, r2)
            a_cat = torch.cat([a1, a2], 0)  # (r1+r2, in)
            b_cat = torch.cat([s1 * b1, s2 * b2], 1)  # (out, r1+r2)
            if max_rank is not None:
                a_cat, b_cat = compress_lora(a_cat, b_cat, max_rank)  # (k, in), (out, k)
            merged[f"{module}.lora_A.weight"] = a_cat
            merged[f"{module}.lora_B.weight"] = b_cat
        state = merged
        out_cfg.r = out_cfg.lora_alpha = r1 + r2 if max_rank is None else min(max_rank, r1 + r2)
        out_cfg.use_rslora = False
        out_cfg.layers_to_transform = None
        out_cfg.rank_pattern, out_cfg.alpha_pattern = {}, {}
        # exact module paths (peft matches target names by suffix), so differing targets/layers stay exact
        out_cfg.target_modules = sorted(m.split("base_model.model.", 1)[-1] for m in _targets(state))
    out_cfg.inference_mode = True
    out_cfg.save_pretrained(str(path))
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
    return path


def _targets(state: dict[str, Tensor]) -> list[str]:
    """Module paths that carry a LoRA in a peft state dict."""
    return [k.rsplit(".lora_A", 1)[0] for k in state if ".lora_A" in k]
