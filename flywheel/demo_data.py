"""The demo task: customer-support triage for "Acme Shop", and a generator of realistic production logs.

The assistant answers every user message with ONE line of JSON ``{"intent": "<intent>", "order_id": "<6 digits>"}``.
Each user message asks for one intent, decidable from keywords (``intent_of``), and names a 6-digit order id.

``generate_logs`` writes what production would have logged (DESIGN.md §2) under ``<out>/dt=YYYY-MM-DD/part-*.jsonl[.gz]``:
- the production model's completion is sometimes wrong, and SYSTEMATICALLY wrong on some intents
  (defaults: ``cancel_order`` is mostly answered as ``refund``; ``change_address`` mostly gets a wrong order id),
  so imitating the logs copies the mistakes;
- feedback is noisy: ``resolved`` follows correctness but ``label_noise`` of the labels are flipped; ``thumbs`` is
  sparse (~30 %) and noisy; ``escalated`` is mostly on wrong answers;
- a ``defect_rate`` share of the lines are defects (malformed JSON, invalid UTF-8, missing fields, wrong types,
  duplicates, out-of-range values, oversized texts, PII). Each defect is recorded in ``<out>/_defects/<day>.jsonl``
  with the object, line, kind and the validate reason it must be quarantined with (or ``expect: "scrub"`` for PII);
- gold answers are written outside the partitions, ``<out>/_gold/<day>.jsonl``, so observe never reads them.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

INTENTS = ("track_order", "refund", "cancel_order", "change_address", "complaint")
TASK = "support_triage"
MODEL_VERSION = "support-bot@champion/3"
SYSTEM_PROMPT = (
    "You are the support triage assistant of Acme Shop. Read the customer's message and answer with ONE line of "
    'JSON and nothing else: {"intent": "<intent>", "order_id": "<6 digits>"}. The intent is one of: '
    + ", ".join(INTENTS) + ". The order_id is the customer's 6-digit order number, copied exactly."
)

PHRASINGS: dict[str, tuple[str, ...]] = {
    "track_order": (
        "Where is my order {oid}?", "Can you track order {oid} for me?", "What's the status of order #{oid}?",
        "When will order {oid} arrive?", "Has order {oid} shipped yet?", "I'd like a shipping update on {oid}.",
        "Tracking info for order {oid} please", "order {oid}, where's my package", "Any news on the delivery status of {oid}?",
        "Is {oid} on its way?", "I'm still waiting for order {oid}, can you check where it is?", "What's the ETA for order {oid}?",
        "my parcel {oid} hasn't arrived, where is it", "Could you look up the shipment status for {oid}?",
        "Track my package, order number {oid}.", "When does order {oid} get here?", "Has my order {oid} been dispatched?",
        "Please tell me where order {oid} is right now.", "Is order {oid} out for delivery yet?", "Order {oid}: expected delivery date?",
    ),
    "refund": (
        "I want a refund for order {oid}.", "Please refund order {oid}.", "Can I get my money back for {oid}?",
        "Refund request: order #{oid}", "How do I get reimbursed for order {oid}?", "I sent back {oid} last week, please process my refund.",
        "Order {oid} was charged twice, I need a refund of one charge.", "I'd like my money back on order {oid}.",
        "Give me a refund for {oid} please", "Requesting reimbursement for order {oid}.", "can you issue a refund on {oid}",
        "The item in {oid} didn't fit, I want my money returned.", "Please credit my card back for order {oid}.",
        "Refund {oid} to my original payment method.", "I'm owed a refund for order {oid}.",
        "How long until the refund for {oid} hits my account?", "Can order {oid} be refunded?",
        "Want my money back for {oid}, it was the wrong size.", "Process a refund for order number {oid}, thanks.",
        "Please reimburse me for {oid}.",
    ),
    "cancel_order": (
        "Cancel order {oid}.", "Please cancel my order {oid}.", "I need to cancel {oid} before it ships.",
        "Can you cancel order #{oid}?", "I no longer want order {oid}, please cancel it.", "Stop order {oid}, I ordered by mistake.",
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
    "track_order": r"where is|where's|where it is|where order|track\w*|status|arriv\w*|shipped|shipping update|shipment|"
                   r"on its way|eta|get here|dispatched|out for delivery|expected delivery",
    "refund": r"refund\w*|money|reimburs\w*|credit my card",
    "cancel_order": r"cancel\w*|call off|don't ship|do not ship|no longer want|stop order|abort|kill order|void|withdraw",
    "change_address": r"address|moved|apartment|zip code|postcode|street|redirect|reroute|delivery location",
    "complaint": r"complain\w*|unacceptable|terrible|disappointed|rude|worst|furious|horrible|awful|angry|poor service|"
                 r"frustrated|dissatisfied|disgrace|upset",
}
_KEYWORD_RES = {intent: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE) for intent, pattern in _KEYWORDS.items()}
_ORDER_ID = re.compile(r"(?<!\d)(\d{6})(?!\d)")

# Production model: share of correct answers per intent, and the systematic mistake it makes on an intent.
DEFAULT_INTENT_ACCURACY = {"track_order": 0.9, "refund": 0.9, "cancel_order": 0.1, "change_address": 0.15, "complaint": 0.85}
DEFAULT_ERROR_MODES = {"cancel_order": "intent:refund", "change_address": "order_id"}  # 90 % of that intent's errors
DEFECT_KINDS = ("malformed", "missing_field", "wrong_type", "duplicate", "out_of_range", "oversized", "pii")
REQUIRED_FIELDS = ("request_id", "timestamp", "task", "model_version", "messages", "completion")


def intent_of(text: str) -> str | None:
    """The intent a user message asks for, by keywords (most hits wins, ties in ``INTENTS`` order); None if no keyword.

    >>> intent_of("Please cancel my order 123456.")
    'cancel_order'
    """
    hits = {intent: len(rx.findall(text)) for intent, rx in _KEYWORD_RES.items()}
    best = max(INTENTS, key=lambda i: hits[i])
    return best if hits[best] else None


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


def make_prompt(rng: random.Random, intent: str | None = None, order_id: str | None = None) -> tuple[list[dict], str, str]:
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
    try:
        obj = json.loads(text.strip())
    except (ValueError, AttributeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("intent"), str) or not isinstance(obj.get("order_id"), str):
        return None
    return {"intent": obj["intent"], "order_id": obj["order_id"]}


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


def _feedback(rng: random.Random, correct: bool, label_noise: float) -> dict:
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


_PII = ("john.doe{n}@example.com", "+1 415-555-{n:04d}", "4111 1111 1111 1111", "jane_{n}@mail.example.org")


def _apply_defect(rng: random.Random, kind: str, row: dict, max_chars: int) -> tuple[bytes | dict, str]:
    """Turn a clean row into a defect of ``kind``; returns (line bytes or row dict, expected validate reason)."""
    if kind == "malformed":
        line = orjson.dumps(row)
        choice = rng.randrange(4)
        if choice == 0:
            return line[: rng.randrange(5, len(line) - 5)], "malformed_json"
        if choice == 1:
            cut = rng.randrange(5, len(line) - 5)
            return line[:cut] + b"\xff\xfe\xc3" + line[cut:], "invalid_utf8"
        if choice == 2:
            return b"[" + line + b"]", "not_an_object"
        return b"<html>502 Bad Gateway</html>", "malformed_json"
    if kind == "missing_field":
        name = rng.choice(REQUIRED_FIELDS)
        del row[name]
        return row, f"missing:{name}"
    if kind == "wrong_type":
        name, value = rng.choice([
            ("latency_ms", "fast"), ("thumbs", "up"), ("messages", "hello"), ("completion", 12345),
            ("resolved", "yes"), ("timestamp", 1764000000), ("request_id", 987654), ("escalated", 3),
        ])
        if name in ("thumbs", "resolved", "escalated"):
            row["feedback"][name] = value
        else:
            row[name] = value
        return row, f"type:{name}"
    if kind == "out_of_range":
        name = rng.choice(["thumbs", "latency_ms", "timestamp", "role"])
        if name == "thumbs":
            row["feedback"]["thumbs"] = rng.choice([5, -3, 2])
        elif name == "latency_ms":
            row["latency_ms"] = -rng.randint(1, 1000)
        elif name == "timestamp":
            row["timestamp"] = "2099-01-01T00:00:00Z"
        else:
            row["messages"][1]["role"] = "wizard"
        return row, f"range:{name}"
    if kind == "oversized":
        blob = "lorem ipsum " * (max_chars // 12 + rng.randint(50, 500))
        if rng.random() < 0.5:
            row["completion"] = blob
            return row, "length:completion"
        row["messages"][1]["content"] += " " + blob
        return row, "length:messages"
    if kind == "pii":
        pii = rng.choice(_PII).format(n=rng.randint(0, 9999))
        if rng.random() < 0.5:
            row["messages"][1]["content"] += f" You can reach me at {pii}."
        else:
            row["feedback"]["comment"] = f"call me back: {pii}"
        return row, "pii"
    raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")


@dataclass
class DemoLogSummary:
    out_dir: str
    days: list[str]
    rows: int                       # lines written into the partitions (defects included)
    objects: int
    defects: dict[str, int]         # kind -> count
    quarantine_expected: int        # defects that validate must quarantine (all but PII)
    logged_accuracy: float          # share of logged completions that are correct (gold)
    accuracy_by_intent: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def generate_logs(out_dir: str | Path, days: int = 3, rows_per_day: int = 1000, seed: int = 0,
                  defect_rate: float = 0.05, start_date: str | dt.date | None = None,
                  intent_accuracy: dict[str, float] | None = None, error_modes: dict[str, str] | None = None,
                  label_noise: float = 0.1, parts_per_day: int = 2, fmt: str = "jsonl.gz",
                  defect_kinds: tuple[str, ...] = DEFECT_KINDS, max_chars: int = 8000) -> DemoLogSummary:
    """Write ``days`` partitions of ``rows_per_day`` logged interactions (defects included) under ``out_dir``.

    ``start_date`` defaults to ``days`` days before today (UTC), so the newest partition is yesterday and no timestamp
    is in the future. ``fmt``: ``jsonl``, ``jsonl.gz`` or ``parquet`` (Parquet gets no line-level defects).
    ``intent_accuracy`` overrides the production model's per-intent accuracy (``DEFAULT_INTENT_ACCURACY``).
    """
    if fmt not in ("jsonl", "jsonl.gz", "parquet"):
        raise ValueError(f"fmt: must be jsonl, jsonl.gz or parquet, got {fmt!r}")
    unknown = set(defect_kinds) - set(DEFECT_KINDS)
    if unknown:
        raise ValueError(f"defect_kinds: unknown {sorted(unknown)}; known: {', '.join(DEFECT_KINDS)}")
    if fmt == "parquet":
        defect_kinds = tuple(k for k in defect_kinds if k not in ("malformed", "wrong_type"))
    accuracy = {**DEFAULT_INTENT_ACCURACY, **(intent_accuracy or {})}
    modes = DEFAULT_ERROR_MODES if error_modes is None else error_modes
    if start_date is None:
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    else:
        start = start_date if isinstance(start_date, dt.date) else dt.date.fromisoformat(str(start_date))
    out = Path(out_dir)
    rng = random.Random(seed)
    defects: Counter = Counter()
    correct_by_intent: Counter = Counter()
    total_by_intent: Counter = Counter()
    day_names, objects = [], 0
    for d in range(days):
        day = start + dt.timedelta(days=d)
        name = day.isoformat()
        day_names.append(name)
        part_dir = out / f"dt={name}"
        part_dir.mkdir(parents=True, exist_ok=True)
        (out / "_gold").mkdir(exist_ok=True)
        (out / "_defects").mkdir(exist_ok=True)
        gold_lines, defect_lines = [], []
        seconds = sorted(rng.randrange(86400) for _ in range(rows_per_day))
        bounds = [round(i * rows_per_day / parts_per_day) for i in range(parts_per_day + 1)]
        for p in range(parts_per_day):
            obj = f"dt={name}/part-{p:05d}.{fmt}"
            lines: list[bytes | dict] = []
            clean_rows: list[dict] = []
            for i in range(bounds[p], bounds[p + 1]):
                request_id = f"req-{day:%Y%m%d}-{i:07d}"
                messages, intent, order_id = make_prompt(rng)
                completion = production_answer(rng, intent, order_id, accuracy, modes)
                correct = is_correct(completion, intent, order_id)
                total_by_intent[intent] += 1
                correct_by_intent[intent] += correct
                ts = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(seconds=seconds[i])
                row = {
                    "request_id": request_id, "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "task": TASK,
                    "model_version": MODEL_VERSION, "messages": messages, "completion": completion,
                    "feedback": _feedback(rng, correct, label_noise),
                    "latency_ms": int(rng.lognormvariate(5.6, 0.4)),
                    "metadata": {"channel": rng.choice(["chat", "email", "app"]), "locale": "en-US"},
                }
                kind = rng.choice(defect_kinds) if defect_kinds and rng.random() < defect_rate else None
                if kind == "duplicate" and not clean_rows:
                    kind = None
                gold_lines.append({"request_id": request_id, "messages": messages,
                                   "completion": gold_completion(intent, order_id), "intent": intent,
                                   "order_id": order_id, "logged_completion": completion, "logged_correct": correct,
                                   "defect": kind})
                if kind is None:
                    lines.append(row)
                    clean_rows.append(row)
                    continue
                if kind == "duplicate":
                    line, reason = dict(rng.choice(clean_rows)), "duplicate:request_id"
                    request_id = line["request_id"]
                else:
                    line, reason = _apply_defect(rng, kind, json.loads(json.dumps(row)), max_chars)
                lines.append(line)
                defects[kind] += 1
                defect_lines.append({"object": obj, "line": len(lines), "kind": kind, "reason": reason,
                                     "request_id": request_id, "expect": "scrub" if kind == "pii" else "quarantine"})
            _write_object(part_dir.parent / obj, lines, fmt)
            objects += 1
        _write_jsonl(out / "_gold" / f"{name}.jsonl", gold_lines)
        _write_jsonl(out / "_defects" / f"{name}.jsonl", defect_lines)
    total = sum(total_by_intent.values())
    return DemoLogSummary(
        out_dir=str(out), days=day_names, rows=days * rows_per_day, objects=objects, defects=dict(defects),
        quarantine_expected=sum(n for k, n in defects.items() if k != "pii"),
        logged_accuracy=round(sum(correct_by_intent.values()) / max(total, 1), 4),
        accuracy_by_intent={i: round(correct_by_intent[i] / max(total_by_intent[i], 1), 4) for i in INTENTS},
    )


def _write_object(path: Path, lines: list[bytes | dict], fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_struct_array(pa.array(lines)), path)
        return
    data = b"\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines) + b"\n"
    if fmt == "jsonl.gz":
        data = gzip.compress(data, compresslevel=1, mtime=0)
    path.write_bytes(data)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def load_gold(out_dir: str | Path, days: list[str] | None = None) -> list[dict]:
    """Gold records (request_id, messages, completion, intent, order_id, ...) of ``days`` (all if None)."""
    files = sorted(Path(out_dir, "_gold").glob("*.jsonl"))
    return [orjson.loads(line) for f in files if days is None or f.stem in days
            for line in f.read_bytes().splitlines() if line]


def load_defects(out_dir: str | Path) -> list[dict]:
    """Every recorded defect: object, line, kind, reason (the validate reason expected), request_id, expect."""
    return [orjson.loads(line) for f in sorted(Path(out_dir, "_defects").glob("*.jsonl"))
            for line in f.read_bytes().splitlines() if line]
