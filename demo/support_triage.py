"""The demo task ``support_triage``: customer-support triage for "Acme Shop".

The assistant answers every user message with ONE line of JSON ``{"intent": "<intent>", "order_id": "<6 digits>"}``.
Each user message asks for one intent, decidable from keywords (``intent_of``), and names a 6-digit order id.

What production logged (``generate_logs``, see ``demo.logs``):
- the production model's completion is sometimes wrong, and SYSTEMATICALLY wrong on some intents
  (defaults: ``cancel_order`` is mostly answered as ``refund``; ``change_address`` mostly gets a wrong order id),
  so imitating the logs copies the mistakes;
- feedback is noisy: ``resolved`` follows correctness but ``label_noise`` of the labels are flipped; ``thumbs`` is
  sparse (~30 %) and noisy; ``escalated`` is mostly on wrong answers.

``SupportTriage`` is the task as ``demo.logs.DemoTask``; the module-level functions are its parts, by intent and
order id.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import re
from pathlib import Path

from demo import logs
from demo.logs import (
    DEFECT_KINDS,
    REQUIRED_FIELDS,
    DemoLogSummary,
    kind_by_keywords,
    load_defects,
    load_gold,
    parse_json_fields,
)

__all__ = [
    "DEFAULT_ERROR_MODES", "DEFAULT_INTENT_ACCURACY", "DEFECT_KINDS", "INTENTS", "MODEL_VERSION", "PHRASINGS",
    "PROJECT", "REQUIRED_FIELDS", "SYSTEM_PROMPT", "TASK", "DemoLogSummary", "SupportTriage", "generate_logs",
    "gold_completion", "intent_of", "is_correct", "load_defects", "load_gold", "make_prompt", "order_id_in",
    "parse_completion", "production_answer", "reward_components", "user_text",
]

INTENTS = ("track_order", "refund", "cancel_order", "change_address", "complaint")
TASK = "support_triage"
PROJECT = "support-bot"
MODEL_VERSION = f"{PROJECT}@champion/3"
SYSTEM_PROMPT = (
    "You are the support triage assistant of Acme Shop. Read the customer's message and answer with ONE line of "
    'JSON and nothing else: {"intent": "<intent>", "order_id": "<6 digits>"}. The intent is one of: '
    + ", ".join(INTENTS) + ". The order_id is the customer's 6-digit order number, copied exactly."
)

PHRASINGS: dict[str, tuple[str, ...]] = {
    "track_order": (
        "Where is my order {oid}?", "Can you track order {oid} for me?", "What's the status of order #{oid}?",
        "When will order {oid} arrive?", "Has order {oid} shipped yet?", "I'd like a shipping update on {oid}.",
        "Tracking info for order {oid} please", "order {oid}, where's my package",
        "Any news on the delivery status of {oid}?",
        "Is {oid} on its way?", "I'm still waiting for order {oid}, can you check where it is?",
        "What's the ETA for order {oid}?",
        "my parcel {oid} hasn't arrived, where is it", "Could you look up the shipment status for {oid}?",
        "Track my package, order number {oid}.", "When does order {oid} get here?",
        "Has my order {oid} been dispatched?",
        "Please tell me where order {oid} is right now.", "Is order {oid} out for delivery yet?",
        "Order {oid}: expected delivery date?",
    ),
    "refund": (
        "I want a refund for order {oid}.", "Please refund order {oid}.", "Can I get my money back for {oid}?",
        "Refund request: order #{oid}", "How do I get reimbursed for order {oid}?",
        "I sent back {oid} last week, please process my refund.",
        "Order {oid} was charged twice, I need a refund of one charge.", "I'd like my money back on order {oid}.",
        "Give me a refund for {oid} please", "Requesting reimbursement for order {oid}.",
        "can you issue a refund on {oid}",
        "The item in {oid} didn't fit, I want my money returned.", "Please credit my card back for order {oid}.",
        "Refund {oid} to my original payment method.", "I'm owed a refund for order {oid}.",
        "How long until the refund for {oid} hits my account?", "Can order {oid} be refunded?",
        "Want my money back for {oid}, it was the wrong size.", "Process a refund for order number {oid}, thanks.",
        "Please reimburse me for {oid}.",
    ),
    "cancel_order": (
        "Cancel order {oid}.", "Please cancel my order {oid}.", "I need to cancel {oid} before it ships.",
        "Can you cancel order #{oid}?", "I no longer want order {oid}, please cancel it.",
        "Stop order {oid}, I ordered by mistake.",
        "Call off order {oid} please.", "Don't ship {oid}, I changed my mind.", "Cancellation request for order {oid}.",
        "I'd like to cancel {oid}.", "Please do not ship order {oid}.", "Order {oid} was a mistake, cancel it.",
        "hey cancel {oid} asap", "Is it too late to cancel order {oid}?", "Abort my order {oid}.",
        "I want order {oid} cancelled.", "Kill order {oid}, I don't need it anymore.", "Please void order {oid}.",
        "Withdraw my purchase {oid}, please.", "I placed {oid} by accident, please cancel.",
    ),
    "change_address": (
        "Change the shipping address for order {oid}.", "I moved, please update the address on {oid}.",
        "Can you send order {oid} to a different address?", "Wrong address on order {oid}, can I fix it?",
        "Update the delivery address for {oid} please.", "I need order {oid} sent to my new apartment.",
        "Please change the zip code on order {oid}.", "The street number on {oid} is wrong.",
        "New address for order #{oid}: 12 Elm Road.", "Can order {oid} go to my work address instead?",
        "I've moved house, redirect {oid} please.", "Edit the address of order {oid}.",
        "Send {oid} to my parents' place instead, here's the address.", "Please correct the postcode for {oid}.",
        "Order {oid} has my old address, please change it.", "Ship {oid} to 4 Oak Lane instead of my home address.",
        "My address changed, can you update order {oid}?", "typo in the address on {oid}",
        "Reroute order {oid} to my new home.", "Change the delivery location of order {oid}, please.",
    ),
    "complaint": (
        "I want to file a complaint about order {oid}.", "The item in order {oid} is broken, this is unacceptable.",
        "Your service on {oid} was terrible.", "I'm very disappointed with order {oid}.",
        "The courier was rude when delivering {oid}.", "I have a complaint regarding {oid}.",
        "Worst experience ever with order {oid}.", "I'm furious about how order {oid} was handled.",
        "Order {oid} was a horrible experience.", "Not happy at all with {oid}, the quality is awful.",
        "I need to complain about order #{oid}.", "This is the third time {oid} has gone wrong, I'm angry.",
        "Poor service on order {oid}, I expect better.", "The product from {oid} is awful.",
        "I'm frustrated with the handling of order {oid}.", "Lodging a formal complaint: order {oid}.",
        "Extremely dissatisfied with order {oid}.", "Your support team ignored me about {oid}, unacceptable.",
        "The packaging of {oid} was a disgrace.", "I'm upset about the quality of order {oid}.",
    ),
}
_PREFIXES = ("", "", "Hi, ", "Hello, ", "Hey there. ", "Good morning. ", "Hi team, ")
_SUFFIXES = ("", "", " Thanks.", " Thank you!", " Please help.", " Cheers.")

_KEYWORDS: dict[str, str] = {
    "track_order": r"where is|where's|where it is|where order|track\w*|status|arriv\w*|shipped|shipping update|"
                   r"shipment|on its way|eta|get here|dispatched|out for delivery|expected delivery",
    "refund": r"refund\w*|money|reimburs\w*|credit my card",
    "cancel_order": r"cancel\w*|call off|don't ship|do not ship|no longer want|stop order|abort|kill order|void|"
                    r"withdraw",
    "change_address": r"address|moved|apartment|zip code|postcode|street|redirect|reroute|delivery location",
    "complaint": r"complain\w*|unacceptable|terrible|disappointed|rude|worst|furious|horrible|awful|angry|poor service|"
                 r"frustrated|dissatisfied|disgrace|upset",
}
_KEYWORD_RES = {intent: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE) for intent, pattern in _KEYWORDS.items()}
_ORDER_ID = re.compile(r"(?<!\d)(\d{6})(?!\d)")

# Production model: share of correct answers per intent, and the systematic mistake it makes on an intent.
DEFAULT_INTENT_ACCURACY = {"track_order": 0.9, "refund": 0.9, "cancel_order": 0.1, "change_address": 0.15,
                           "complaint": 0.85}
DEFAULT_ERROR_MODES = {"cancel_order": "intent:refund", "change_address": "order_id"}  # 90 % of that intent's errors


def reward_components() -> list[dict]:
    """The task's ``rewards.components`` for the demo's YAML: its answer schema and the order-id rule, on top of
    the task-agnostic defaults (reward model on feedback, KPI, not_degenerate)."""
    from flywheel.rewards.spec import default_components

    schema = {"type": "object", "required": ["intent", "order_id"], "additionalProperties": False,
              "properties": {"intent": {"enum": list(INTENTS)}, "order_id": {"type": "string", "pattern": r"^\d{6}$"}}}
    return [
        {"name": "format", "kind": "rule", "weight": 1.0, "params": {"check": "json_schema", "schema": schema}},
        {"name": "order_id", "kind": "rule", "weight": 1.0,
         "params": {"check": "extract_compare", "pattern": r"(?<!\d)\d{6}(?!\d)"}},
        *[c.model_dump() for c in default_components() if c.kind != "rule"],
    ]


def intent_of(text: str) -> str | None:
    """The intent a user message asks for, by keywords (most hits wins, ties in ``INTENTS`` order); None if no keyword.

    >>> intent_of("Please cancel my order 123456.")
    'cancel_order'
    """
    return kind_by_keywords(text, _KEYWORD_RES, INTENTS)


def order_id_in(text: str) -> str | None:
    """The first 6-digit number in ``text`` (the order id of a user message)."""
    m = _ORDER_ID.search(text)
    return m.group(1) if m else None


def user_text(messages: list[dict]) -> str:
    """Content of the last user message of a chat."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def make_prompt(rng: random.Random, intent: str | None = None,
                order_id: str | None = None) -> tuple[list[dict], str, str]:
    """A (system, user) chat asking for ``intent`` (random if None) about ``order_id`` (random 6 digits if None)."""
    intent = intent or rng.choice(INTENTS)
    order_id = order_id or str(rng.randint(100000, 999999))
    text = rng.choice(_PREFIXES) + rng.choice(PHRASINGS[intent]).format(oid=order_id) + rng.choice(_SUFFIXES)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}], intent, order_id


def gold_completion(intent: str, order_id: str) -> str:
    """The correct answer: ``{"intent": "refund", "order_id": "123456"}``."""
    return json.dumps({"intent": intent, "order_id": order_id})


def parse_completion(text: str) -> dict | None:
    """``{"intent", "order_id"}`` if ``text`` is one JSON object with both as strings, else None."""
    return parse_json_fields(text, ("intent", "order_id"))


def is_correct(completion: str, intent: str, order_id: str) -> bool:
    """Gold check: valid JSON answer with the right intent and exactly the right order id."""
    parsed = parse_completion(completion)
    return parsed is not None and parsed["intent"] == intent and parsed["order_id"] == order_id


def _corrupt_id(rng: random.Random, order_id: str) -> str:
    pos = rng.randrange(1, 6)
    digit = rng.choice([d for d in "0123456789" if d != order_id[pos]])
    return order_id[:pos] + digit + order_id[pos + 1:]


def production_answer(rng: random.Random, intent: str, order_id: str, accuracy: dict[str, float],
                      error_modes: dict[str, str]) -> str:
    """What the production model logged: right with ``accuracy[intent]``, else its (often systematic) mistake."""
    if rng.random() < accuracy.get(intent, 0.8):
        return gold_completion(intent, order_id)
    mode = error_modes.get(intent) if rng.random() < 0.9 else None
    if mode is None:
        mode = rng.choices(["intent:*", "order_id", "malformed"], weights=[0.5, 0.35, 0.15])[0]
    if mode.startswith("intent:"):
        wrong = mode.split(":", 1)[1]
        if wrong == "*" or wrong == intent:
            wrong = rng.choice([i for i in INTENTS if i != intent])
        return gold_completion(wrong, order_id)
    if mode == "order_id":
        return gold_completion(intent, _corrupt_id(rng, order_id))
    return rng.choice([
        gold_completion(intent, order_id)[:-1],
        f"intent: {intent}, order: {order_id}",
        "Sure, I can help you with that order!",
        f"{{'intent': '{intent}', 'order_id': '{order_id}'}}",
    ])


def feedback(rng: random.Random, correct: bool, label_noise: float) -> dict:
    """Logged feedback: ``resolved`` follows correctness (``label_noise`` flipped), sparse noisy ``thumbs`` (~30 %),
    ``escalated`` mostly on wrong answers, rare ``edited``, a comment on ~5 % of the wrong answers."""
    def noisy(value: bool) -> bool:
        return (not value) if rng.random() < label_noise else value

    comment = None
    if not correct and rng.random() < 0.05:
        comment = rng.choice(["wrong category", "that is not my order", "bot did not understand", "useless"])
    return {
        "thumbs": (1 if noisy(correct) else -1) if rng.random() < 0.3 else None,
        "resolved": noisy(correct),
        "escalated": rng.random() < (0.05 if correct else 0.6),
        "edited": rng.random() < 0.02,
        "comment": comment,
    }


class SupportTriage:
    """Support triage as a ``demo.logs.DemoTask``: kinds are the intents, gold is ``{"kind", "intent", "order_id"}``.

    ``error_modes`` overrides the production model's systematic mistake per intent (``DEFAULT_ERROR_MODES``).
    """

    NAME = TASK
    PROJECT = PROJECT
    MODEL_VERSION = MODEL_VERSION
    DESCRIPTION = "Acme Shop customer-support triage: the intent of a customer's message and its 6-digit order id"
    KINDS = INTENTS
    DEFAULT_ACCURACY = DEFAULT_INTENT_ACCURACY

    def __init__(self, error_modes: dict[str, str] | None = None):
        self.error_modes = DEFAULT_ERROR_MODES if error_modes is None else error_modes

    def make_prompt(self, rng: random.Random, kind: str | None = None) -> tuple[list[dict], dict]:
        messages, intent, order_id = make_prompt(rng, kind)
        return messages, {"kind": intent, "intent": intent, "order_id": order_id}

    def production_answer(self, rng: random.Random, gold: dict, accuracy: dict[str, float]) -> tuple[str, bool]:
        completion = production_answer(rng, gold["intent"], gold["order_id"], accuracy, self.error_modes)
        return completion, self.is_correct(completion, gold)

    def feedback(self, rng: random.Random, correct: bool, label_noise: float) -> dict:
        return feedback(rng, correct, label_noise)

    def gold_completion(self, gold: dict) -> str:
        return gold_completion(gold["intent"], gold["order_id"])

    def is_correct(self, answer: str, gold: dict) -> bool:
        return is_correct(answer, gold["intent"], gold["order_id"])

    def reward_components(self) -> list[dict]:
        return reward_components()


def generate_logs(out_dir: str | Path, days: int = 3, rows_per_day: int = 1000, seed: int = 0,
                  defect_rate: float = 0.05, start_date: str | dt.date | None = None,
                  intent_accuracy: dict[str, float] | None = None, error_modes: dict[str, str] | None = None,
                  label_noise: float = 0.1, parts_per_day: int = 2, fmt: str = "jsonl.gz",
                  defect_kinds: tuple[str, ...] = DEFECT_KINDS, max_chars: int = 8000) -> DemoLogSummary:
    """Support-triage logs (``demo.logs.generate_logs``): ``intent_accuracy`` overrides the production model's
    per-intent accuracy (``DEFAULT_INTENT_ACCURACY``), ``error_modes`` its systematic mistakes."""
    return logs.generate_logs(SupportTriage(error_modes), out_dir, days=days, rows_per_day=rows_per_day, seed=seed,
                              defect_rate=defect_rate, start_date=start_date, accuracy=intent_accuracy,
                              label_noise=label_noise, parts_per_day=parts_per_day, fmt=fmt,
                              defect_kinds=defect_kinds, max_chars=max_chars)
