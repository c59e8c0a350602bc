"""A language model as an agent policy in an environment, token-exact: what it samples is what it trains on.

``TokenPolicy`` is a batch policy for ``environments.lockstep.collect_batched``: it gets every running
episode's conversation (OpenAI messages) and returns each one's next assistant message as a ``PolicyOutput`` with
the exact ``token_ids`` it sampled, their ``logprobs`` and the ``context_ids`` it appended before sampling. The
conversation is never re-tokenised between turns: on the first turn the context is the rendered prompt; later it
is only the messages that arrived since the policy's own last message (tool results, the user's reply), rendered
by the chat template as the suffix of the whole conversation. So an episode's training stream, the concatenation of
``context_ids + token_ids`` over its turns (``streams_of``), is token for token the stream the policy sampled from.

The sampler is injected (``sample(prefixes, seeds) -> [(ids, logprobs)]``, e.g. ``models.multiturn
.sample_from_prefixes`` on the policy role), so the same adapter drives evaluation, collection and PPO rollouts.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from environments.collect import Episode, PolicyOutput

Sampler = Callable[[list[list[int]], list[int]], list[tuple[list[int], list[float]]]]


def _turn_seed(episode: Episode, turn: int) -> int:
    digest = hashlib.sha256(f"{episode.seed}:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class _Stream:
    ids: list[int] = field(default_factory=list)  # every token so far (context and sampled)
    seen: int = 0  # messages of the conversation already in ``ids``
    turns: int = 0


def template_tools(tokenizer, schemas: Sequence[dict]) -> list[dict] | None:
    """The tool schemas (OpenAI format) to hand ``apply_chat_template(..., tools=...)``: a real model's template
    (Qwen, Llama 3.1, Mistral, Hermes) renders them in the format the model was trained on. None when the template
    takes no ``tools`` (the tiny template: the base learns the calls from production transcripts)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # a tokenizer with named templates: the default one, or the tool-use one
        template = " ".join(str(t) for t in template.values())
    return [dict(s) for s in schemas] if re.search(r"\btools\b", template) else None


@dataclass
class TokenPolicy:
    """Batch policy over a tokenizer with a chat template and an injected token sampler (see module doc);
    ``tools``: the schemas the chat template renders (``template_tools``), or None."""

    tokenizer: Any
    sample: Sampler
    tools: list[dict] | None = None
    _streams: dict[tuple[str, int, int], _Stream] = field(default_factory=dict, repr=False)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        extra = {"tools": self.tools} if self.tools is not None else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **extra)

    def context_ids(self, stream: _Stream, messages: list[dict]) -> list[int]:
        """The tokens of the messages the policy has not seen yet, ending with the opened assistant turn."""
        full = self._render(messages, True)
        before = self._render(messages[:stream.seen], False) if stream.seen else ""
        if not full.startswith(before):
            raise ValueError("chat template is not prefix-stable: rendering the conversation changed the turns "
                             "already sampled, so the token stream cannot be extended without re-tokenising")
        return self.tokenizer(full[len(before):], add_special_tokens=False)["input_ids"]

    def __call__(self, conversations: Sequence[list[dict]], episodes: Sequence[Episode]) -> list[PolicyOutput]:
        streams, contexts, seeds = [], [], []
        for messages, episode in zip(conversations, episodes):
            stream = self._streams.setdefault((episode.task_id, episode.trial, episode.seed), _Stream())
            context = self.context_ids(stream, list(messages))
            stream.ids += context
            streams.append(stream)
            contexts.append(context)
            seeds.append(_turn_seed(episode, stream.turns))
        samples = self.sample([s.ids for s in streams], seeds)
        outputs = []
        for stream, context, messages, (ids, logprobs) in zip(streams, contexts, conversations, samples):
            stream.ids += ids
            stream.seen = len(messages) + 1  # its own assistant message comes next
            stream.turns += 1
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            outputs.append(PolicyOutput(text, list(ids), [float(x) for x in logprobs], list(context)))
        return outputs


def streams_of(records: Sequence[dict]) -> list[list[tuple[list[int], list[int]]]]:
    """Each collected episode's token stream: per turn (context_ids, token_ids), as stored in the JSONL."""
    out = []
    for record in records:
        turns = record["turns"]
        if any(t.get("token_ids") is None or t.get("context_ids") is None for t in turns):
            raise ValueError(f"episode {record['task_id']}/{record['trial']}: a turn has no token ids; it was not "
                             "collected by a token policy")
        out.append([(t["context_ids"], t["token_ids"]) for t in turns])
    return out


def model_sampler(model, tokenizer, *, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                  role: Callable[[], Any] | None = None) -> Sampler:
    """A ``Sampler`` over a Hugging Face causal LM (``models.multiturn.sample_from_prefixes``); ``role()``: a
    context manager entered around each call (``ActorCritic.role("policy")`` for a PPO policy)."""
    from contextlib import nullcontext

    from models.multiturn import sample_from_prefixes

    def sample(prefixes: list[list[int]], seeds: list[int]) -> list[tuple[list[int], list[float]]]:
        with role() if role is not None else nullcontext():
            return sample_from_prefixes(model, tokenizer, prefixes, max_new_tokens=max_new_tokens,
                                        temperature=temperature, seeds=seeds, top_p=top_p)
    return sample


def load_policy_model(base: str | Path, adapter: str | Path | None):
    """(model, tokenizer) of ``base`` with ``adapter`` applied (merged for sampling), in eval mode on the CPU."""
    from models.policy import load_base

    model, tokenizer = load_base(base, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval(), tokenizer
