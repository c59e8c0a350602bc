"""Style examples for the LLM user, picked from real user turns in the interaction logs.

Design
------
A user turn is classified by transparent cues into zero or more of ``impatient``, ``repetitive`` and
``panicked``; a turn with none of them is ``neutral``. The cues (case-insensitive, whole words):

- ``impatient``: ``still``, ``waiting``, ``already``, ``hurry``, ``asap``, ``how long``, ``any update``,
  ``come on``, ``seriously``, ``right now``, ``immediately``, ``yet?``, or two exclamation marks in a row (``!!``);
- ``panicked``: ``urgent(ly)``, ``emergency``, ``asap``, ``panic(king)``, ``sos``, a cry for help (``help!``,
  ``help me!``; a polite "can you help me" or a "Please help." sign-off is not one: in logged support chats that
  sign-off is mostly courtesy), three exclamation marks (``!!!``), or shouting: at least 10 letters of which
  60 % or more are capitals;
- ``repetitive``: the turn repeats an earlier user turn of the same conversation nearly verbatim: the same text
  once lower-cased with punctuation and extra spaces removed, or a token-set overlap (Jaccard) of at least 0.8,
  both turns having at least 3 tokens (so "yes" after "yes" is not a style).

A turn can carry several styles ("hurry, this is urgent!!!" is impatient and panicked).

``conversations(rows)`` reads the user turns per conversation from logged rows (``flywheel.schema``): each row's
``messages`` is the chat before one model call (a list, or its JSON text as in a snapshot). Rows that share
``metadata.conversation_id`` are calls of one conversation whose ``messages`` grow turn by turn, so its longest
``messages`` holds all its user turns; a row without that id is a conversation of its own.

``select_examples`` then keeps, per style, a small deterministic selection: every candidate is PII-scrubbed with
``flywheel.pii.scrub`` (before it is shortened, so a cut never leaves half an email unscrubbed), capped at
``max_chars`` on a word boundary, de-duplicated on its normalised text, sorted, and sampled with a random
generator seeded by ``seed`` and the style's name: the same turns give the same examples in any input order.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

IMPATIENT, REPETITIVE, PANICKED, NEUTRAL = "impatient", "repetitive", "panicked", "neutral"
STYLES = (IMPATIENT, REPETITIVE, PANICKED, NEUTRAL)
IMPATIENT_CUES = re.compile(
    r"\b(?:still|waiting|already|hurry|asap|how long|any update|come on|seriously|right now|immediately)\b"
    r"|\byet\s*\?|!!", re.IGNORECASE)
PANICKED_CUES = re.compile(
    r"\b(?:urgent(?:ly)?|emergency|asap|panic(?:king)?|sos)\b|\bhelp(?: me| us)?\s*!|!!!",
    re.IGNORECASE)
SHOUT_MIN_LETTERS, SHOUT_CAPITALS = 10, 0.6
REPEAT_OVERLAP, REPEAT_MIN_TOKENS = 0.8, 3
# How a persona names a style ("An impatient customer", "panicking about a lost parcel").
PERSONA_CUES = {
    IMPATIENT: re.compile(r"\bimpatient(?:ly)?\b", re.IGNORECASE),
    REPETITIVE: re.compile(r"\brepetitive\b|\brepeats?\b", re.IGNORECASE),
    PANICKED: re.compile(r"\bpanic(?:ked|king|ky)?\b", re.IGNORECASE),
}
STYLE_INTRO = "Here is how real users write when they are {style}:"
STYLE_OUTRO = "Write your messages in that style, but take no facts from these examples."
_TOKEN = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower-cased text with punctuation and extra spaces removed: ``"Where is it?!"`` -> ``"where is it"``."""
    return " ".join(_TOKEN.findall(text.lower()))


def is_shouting(text: str) -> bool:
    """Whether ``text`` has at least ``SHOUT_MIN_LETTERS`` letters, ``SHOUT_CAPITALS`` of them capitals."""
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= SHOUT_MIN_LETTERS and sum(c.isupper() for c in letters) >= SHOUT_CAPITALS * len(letters)


def repeats(text: str, earlier: str) -> bool:
    """Whether ``text`` repeats ``earlier`` nearly verbatim (same normalised text, or token-set Jaccard >= 0.8)."""
    a, b = set(normalise(text).split()), set(normalise(earlier).split())
    if len(a) < REPEAT_MIN_TOKENS or len(b) < REPEAT_MIN_TOKENS:
        return False
    return normalise(text) == normalise(earlier) or len(a & b) / len(a | b) >= REPEAT_OVERLAP


def classify(text: str, earlier: Sequence[str] = ()) -> tuple[str, ...]:
    """The styles of one user turn, in ``STYLES`` order; ``earlier`` are the user turns before it in the same
    conversation (only they can make it ``repetitive``). ``("neutral",)`` when no cue matches.

    >>> classify("I'm still waiting for my parcel!!")
    ('impatient',)
    >>> classify("Where is my order?", earlier=["where is my order"])
    ('repetitive',)
    >>> classify("HELP, MY CARD WAS CHARGED TWICE")
    ('panicked',)
    >>> classify("Can you help me change my address?")
    ('neutral',)
    """
    styles = []
    if IMPATIENT_CUES.search(text):
        styles.append(IMPATIENT)
    if any(repeats(text, before) for before in earlier):
        styles.append(REPETITIVE)
    if PANICKED_CUES.search(text) or is_shouting(text):
        styles.append(PANICKED)
    return tuple(styles) or (NEUTRAL,)


def classify_conversation(turns: Sequence[str]) -> list[tuple[str, ...]]:
    """The styles of each user turn of one conversation, in order."""
    return [classify(text, turns[:i]) for i, text in enumerate(turns)]


def _text(content: Any) -> str:
    """A message's text: a string, or the ``text`` parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _as_json(value: Any, kind: type) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return kind()
    return value if isinstance(value, kind) else kind()


def user_turns(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The non-empty user turns of one chat, in order."""
    texts = (_text(m.get("content")).strip() for m in messages if isinstance(m, dict) and m.get("role") == "user")
    return [t for t in texts if t]


def conversations(rows: Iterable[dict[str, Any]]) -> list[list[str]]:
    """The user turns of each conversation in logged ``rows`` (see the module docstring), in first-seen order."""
    longest: dict[Any, list[dict[str, Any]]] = {}
    for n, row in enumerate(rows):
        messages = _as_json(row.get("messages"), list)
        conversation_id = _as_json(row.get("metadata"), dict).get("conversation_id")
        key = str(conversation_id) if conversation_id else ("row", n)
        if len(messages) >= len(longest.get(key, [])):
            longest[key] = messages
    return [turns for turns in map(user_turns, longest.values()) if turns]


def scrub_texts(texts: list[str], extra_patterns: dict[str, str] | None = None) -> list[str]:
    """``texts`` with PII replaced by ``flywheel.pii.scrub`` (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ...)."""
    import pyarrow as pa  # imported here: environments.users needs only the standard library and httpx

    from flywheel.pii import scrub

    if not texts:
        return []
    table, _ = scrub(pa.table({"text": texts}), extra=extra_patterns, columns=("text",))
    return table.column("text").to_pylist()


def cap(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters on a word boundary, ending in ``…`` when cut."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:") + "…"


def select_examples(turns_by_conversation: Iterable[Sequence[str]], per_style: int = 3, max_chars: int = 200,
                    seed: int = 0, extra_patterns: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Up to ``per_style`` scrubbed, capped, distinct example turns for every style in ``STYLES`` (an empty list
    for a style no turn shows). ``extra_patterns`` are extra PII regexes, as ``validate.pii.extra_patterns``."""
    if per_style < 0 or max_chars < 2:
        raise ValueError(f"per_style must be >= 0 and max_chars >= 2, got {per_style} and {max_chars}")
    labelled = [(style, text) for turns in turns_by_conversation
                for text, styles in zip(turns, classify_conversation(turns)) for style in styles]
    scrubbed = scrub_texts([text for _, text in labelled], extra_patterns)
    candidates: dict[str, dict[str, str]] = {style: {} for style in STYLES}
    for (style, _), text in zip(labelled, scrubbed):
        short = cap(text, max_chars)
        key = normalise(short)
        candidates[style][key] = min(short, candidates[style].get(key, short))  # the same pick in any order
    selection = {}
    for style, by_key in candidates.items():
        pool = [by_key[key] for key in sorted(by_key)]
        selection[style] = random.Random(f"{seed}:{style}").sample(pool, min(per_style, len(pool)))
    return selection


def style_examples(rows: Iterable[dict[str, Any]], per_style: int = 3, max_chars: int = 200, seed: int = 0,
                   extra_patterns: dict[str, str] | None = None) -> dict[str, list[str]]:
    """``select_examples`` over the user turns of logged ``rows``: what ``LLMUser(style_examples=...)`` takes."""
    return select_examples(conversations(rows), per_style, max_chars, seed, extra_patterns)


def persona_style(persona: str | None) -> str | None:
    """The style a task's persona names (``PERSONA_CUES``), or None: ``"An impatient customer"`` -> impatient."""
    for style, cue in PERSONA_CUES.items():
        if persona and cue.search(persona):
            return style
    return None


def style_block(style: str | None, examples: Sequence[str]) -> str:
    """The prompt block showing ``examples`` of ``style``; empty when there is no style or no example."""
    if not style or not examples:
        return ""
    lines = [STYLE_INTRO.format(style=style), *(f'- "{text}"' for text in examples), STYLE_OUTRO]
    return "\n".join(lines)
