"""A tiny Llama-architecture causal LM built offline: BPE tokenizer trained on a corpus + a model from a config.

``build_tiny_model(out_dir, corpus_texts)`` writes a folder that ``AutoTokenizer`` / ``AutoModelForCausalLM``
load like any Hugging Face model. Details that matter for RL (Huang et al., "N+ implementation details"):

* distinct special tokens: ``<|pad|>`` (pad), ``<|im_end|>`` (EOS, closes every chat turn), ``<|im_start|>``;
* digits are split one per token, so copying an order id is copying tokens, not guessing merges;
* a ChatML chat template (``add_generation_prompt`` opens the assistant turn) that renders user, assistant and tool
  turns and folds the system turn away, as Gemma's does: a system prompt is the same on every logged request, so a
  model this small can learn nothing from it, and it was 81 of the demo's 138 tokens per chat. Without it every
  training step (fit, SFT, reward model, PPO) is ~3x cheaper, and copying the order id reached 94-99 % by step 250
  for 4 of 4 seeds, where with it none of 7 runs had passed 35 % by step 300 (see below). A real model's own template
  keeps its system turn;
* agent turns: an assistant message with ``tool_calls`` renders its content (if any), then one
  ``<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>`` per call (ARGS: the call's ``function.arguments`` JSON
  string verbatim), joined by newlines: the Hermes format ``environments.tools.parse_tool_calls`` reads, so a model
  fitted on rendered transcripts writes calls the environment can run. A ``tool`` message renders as a ``tool`` turn;
* the tokenizer pads on the left, as batched generation needs.

Two ways to give the base what a real pretrained model brings:

* ``pretrain_epochs > 0`` fits it to plain texts (next-token prediction, full weights): it "speaks" the log format;
* ``pretrain_chats`` + ``pretrain_steps`` fits it to logged chats (``fit_chats``: full weights, loss on the assistant
  turn, every number in a chat renumbered at random each time it is drawn). This is the stand-in for the skills a
  real 1B+ model arrives with, above all copying a number from the message into the answer. Copying is an
  induction circuit that a tiny model acquires abruptly after a few hundred steps: on the demo task (4 layers,
  width 192) batch 32 at lr 1e-3 goes from 0 to 94-99 % exact 6-digit copies between steps 150 and 250; batch 8, or
  lr >= 2e-3, often had not started by step 2,500 (a GPU sweep of 40 runs, 2026-11-26). Renumbering keeps it
  from memorising the ids instead.
"""
from __future__ import annotations

import gzip
import json
import math
import random
import re
from pathlib import Path

import torch

PAD, EOS, BOS, IM_START = "<|pad|>", "<|im_end|>", "<|bos|>", "<|im_start|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and m['tool_calls'] %}{{ m['content'] or '' }}"
    "{% for tc in m['tool_calls'] %}{% if m['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{% set args = tc['function']['arguments'] %}"
    "<tool_call>{\"name\": {{ tc['function']['name'] | tojson }}, \"arguments\": "
    "{{ args if args is string else args | tojson }}}</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] or '' }}{% endif %}<|im_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# One text of the tokenizer's training corpus: the plain-turn template the tiny base was measured with. The BPE
# vocabulary depends on every corpus text, and the abrupt emergence of id copying depends on the vocabulary: with
# CHAT_TEMPLATE itself here once it grew the tool-call branch, the support_triage day-0 base copied 3 % of order ids
# instead of 75 % (same logs, same seed).
_TOKENIZER_MARKUP = (
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}<|im_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(corpus_texts: list[str], vocab_size: int = 1024, max_length: int = 512):
    """Byte-level BPE with single-digit tokens and the chat special tokens → a ``PreTrainedTokenizerFast`` whose
    ``model_max_length`` is the model's ``max_length`` positions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, EOS, BOS, IM_START],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus_texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS,
        additional_special_tokens=[IM_START], padding_side="left", model_max_length=max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def read_corpus(path: str | Path) -> list[str]:
    """Texts from a file or folder: JSONL interaction logs (message contents + completion), or plain text lines."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    texts: list[str] = []
    for f in files:
        if f.suffix not in {".jsonl", ".json", ".txt", ".gz"}:
            continue
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    texts.append(line)
                    continue
                if not isinstance(row, dict):
                    texts.append(line)
                    continue
                msgs = row.get("messages") or []
                if isinstance(msgs, str):
                    msgs = json.loads(msgs)
                texts += [m.get("content") or "" for m in msgs if isinstance(m, dict)]
                for key in ("completion", "gold_completion", "text"):
                    if isinstance(row.get(key), str):
                        texts.append(row[key])
    if not texts:
        raise ValueError(f"{path}: no texts found (expected JSONL logs or text lines)")
    return texts


def build_tiny_model(
    out_dir: str | Path,
    corpus_texts: list[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 192,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    pretrain_epochs: int = 0,
    pretrain_lr: float = 2e-3,
    pretrain_batch_size: int = 32,
    pretrain_texts: list[str] | None = None,
    pretrain_chats: list[tuple[list[dict], str]] | None = None,
    pretrain_steps: int = 0,
    progress: bool = False,
    seed: int = 0,
) -> Path:
    """Train the tokenizer on ``corpus_texts``, build a Llama from a config (~2.3M params by default), save both.

    ``pretrain_texts`` (default: the corpus) are fitted for ``pretrain_epochs`` epochs; pass whole chat transcripts
    (``tokenizer.apply_chat_template`` strings) so the base learns the turn structure too. ``pretrain_chats``
    ((messages, assistant answer) pairs) are then fitted for ``pretrain_steps`` steps by ``fit_chats``, at
    ``pretrain_lr`` and ``pretrain_batch_size``. Returns ``out_dir``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if not corpus_texts:
        raise ValueError("corpus_texts: empty corpus, the tokenizer needs text to train on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(corpus_texts + [_TOKENIZER_MARKUP], vocab_size, max_position_embeddings)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, attention_dropout=0.0, hidden_act="silu",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if pretrain_epochs > 0:
        pretrain(model, tokenizer, pretrain_texts or corpus_texts, pretrain_epochs, pretrain_lr,
                 pretrain_batch_size, seed)
    if pretrain_chats and pretrain_steps > 0:
        losses = fit_chats(model, tokenizer, pretrain_chats, steps=pretrain_steps, lr=pretrain_lr,
                           batch_size=pretrain_batch_size, seed=seed, progress=progress)
        (out / "pretrain.json").write_text(json.dumps({"steps": pretrain_steps, "lr": pretrain_lr,
                                                       "batch_size": pretrain_batch_size, "chats": len(pretrain_chats),
                                                       "loss_first": losses[0], "loss_last": losses[-1]}))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pretrain(model, tokenizer, texts: list[str], epochs: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Full-weight next-token training on ``texts`` (each followed by EOS); returns the per-epoch mean loss."""
    rng = random.Random(seed)
    data = [tokenizer(t, add_special_tokens=False)["input_ids"][:model.config.max_position_embeddings - 1]
            + [tokenizer.eos_token_id] for t in dict.fromkeys(texts)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n_steps = epochs * math.ceil(len(data) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / n_steps))
    model.train()
    losses = []
    for _ in range(epochs):
        rng.shuffle(data)
        total = 0.0
        for i in range(0, len(data), batch_size):
            chunk = data[i:i + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, seq in enumerate(chunk):  # right padding for training
                ids[j, :len(seq)] = torch.tensor(seq)
                mask[j, :len(seq)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            total += loss.item() * len(chunk)
        losses.append(total / len(data))
    model.eval()
    return losses


_NUMBER = re.compile(r"\d{4,}")


def renumber(rng: random.Random, messages: list[dict], answer: str) -> tuple[list[dict], str]:
    """Replace every run of 4+ digits in the chat by fresh random digits of the same length, the same run by the
    same digits everywhere (messages, their tool-call arguments and answer), so a copied number stays copied and a
    wrong one stays wrong.

    >>> renumber(random.Random(0), [{"role": "user", "content": "order 123456"}], '{"id": "123456"}')[1]
    '{"id": "760487"}'
    """
    fresh: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        run = m.group(0)
        if run not in fresh:
            fresh[run] = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in run[1:])
        return fresh[run]

    def arguments(args):  # a JSON string (OpenAI format) or an already decoded object
        return _NUMBER.sub(sub, args) if isinstance(args, str) else json.loads(_NUMBER.sub(sub, json.dumps(args)))

    def renumbered(m: dict) -> dict:
        out = dict(m, content=_NUMBER.sub(sub, m.get("content") or ""))
        if m.get("tool_calls"):  # an agent turn: the ids in its call arguments are the same ids
            out["tool_calls"] = [dict(c, function=dict(c["function"], arguments=arguments(c["function"]["arguments"])))
                                 if "arguments" in c.get("function", {}) else c for c in m["tool_calls"]]
        return out

    return [renumbered(m) for m in messages], _NUMBER.sub(sub, answer)


def fit_chats(model, tokenizer, chats: list[tuple[list[dict], str]], *, steps: int, lr: float = 1e-3,
              batch_size: int = 32, seed: int = 0, progress: bool = False) -> list[float]:
    """Full-weight training on (messages, answer) pairs, loss on the answer + EOS; each step draws ``batch_size``
    chats (reshuffled epochs) and ``renumber``s them. Warm-up 5 %, cosine decay. Returns the loss of every step."""
    from models.policy import position_ids_from_mask
    from models.sft import collate, tokenize_examples

    if not chats:
        raise ValueError("chats: empty, fitting the base needs at least one logged (messages, answer) pair")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    order: list[int] = []
    losses: list[float] = []
    bar = _progress(progress, steps, "fit the tiny base")
    model.train()
    for _ in range(steps):
        batch = []
        for _ in range(batch_size):
            if not order:
                order = list(range(len(chats)))
                rng.shuffle(order)
            batch.append(renumber(rng, *chats[order.pop()]))
        ids, mask, labels = collate(tokenize_examples(tokenizer, batch, model.config.max_position_embeddings),
                                    tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), labels=labels,
                     use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if bar:
            bar[0].update(bar[1], advance=1, description=f"fit the tiny base, loss {losses[-1]:.3f}")
    if bar:
        bar[0].stop()
    model.eval()
    return losses


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return None
    from rich.progress import Progress

    bar = Progress(transient=False)
    bar.start()
    return bar, bar.add_task(label, total=total)
