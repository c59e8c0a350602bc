"""PII scrubbing of text columns, vectorised with Arrow's RE2 kernels (no per-row Python).

Built-in patterns run in this order (cards and IP addresses before phones, so neither is half-eaten as a phone):
``card`` (13–19 digits, spaces or dashes allowed), ``email``, ``ip`` (dotted IPv4, each part 0-255), ``phone``
(international or grouped numbers: a 6-digit order id is not a phone). Matches become ``[CARD]``, ``[EMAIL]``,
``[IP]``, ``[PHONE]``; extra patterns from ``validate.pii.extra_patterns`` (name -> RE2 regex) become ``[NAME]``.
Names are letters, digits and ``_`` only, so replacements contain no quotes or backslashes and scrubbing inside a
JSON-encoded column (``messages``) keeps it valid JSON.
"""
from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

BUILTIN = {
    "card": r"\b(?:\d[ -]?){12,18}\d\b",
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "ip": r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
    "phone": r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\b\d{2,4})[ .-]\d{3,4}[ .-]\d{3,4}\b",
}
TEXT_COLUMNS = ("messages", "completion", "comment", "metadata")
# Cheap superset of the built-in patterns (an email has "@"; a card has 7 digits in a row or a separator between
# digits; so do a phone and an IP address): one fast pass finds the candidate rows, the real patterns run on those only.
PREFILTER = r"@|\d{7}|\d[ .-]\d|\)\s?\d"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class PiiPatternError(ValueError):
    """An extra pattern RE2 cannot compile; the message names the config key."""


def patterns(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Built-in patterns then the extra ones, each checked to compile under RE2."""
    named = dict(BUILTIN)
    for name, regex in (extra or {}).items():
        if not _NAME.fullmatch(str(name)):
            raise PiiPatternError(f"validate.pii.extra_patterns.{name}: a name is letters, digits and _ (it becomes "
                                  f"the replacement [{str(name).upper()}], which must not break a JSON column)")
        try:
            pc.count_substring_regex(pa.array(["x"]), pattern=regex)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise PiiPatternError(f"validate.pii.extra_patterns.{name}: not a valid RE2 regex: {e}") from None
        named[name] = regex
    return named


def scrub(table: pa.Table, extra: dict[str, str] | None = None,
          columns: tuple[str, ...] = TEXT_COLUMNS) -> tuple[pa.Table, dict[str, int]]:
    """Replace every match in ``columns`` by ``[NAME]``; returns the new table and matches per pattern name.

    One pass of all patterns together finds the few rows with PII; counting and replacing run on those rows only.

    >>> t, n = scrub(pa.table({"completion": ["mail me: a.b@example.com", "order 123456"]}))
    >>> t["completion"].to_pylist(), n["email"], n["phone"]
    (['mail me: [EMAIL]', 'order 123456'], 1, 0)
    """
    named = patterns(extra)
    anything = "|".join([PREFILTER, *(f"(?:{regex})" for name, regex in named.items() if name not in BUILTIN)])
    counts = {name: 0 for name in named}
    for column in columns:
        if column not in table.column_names:
            continue
        idx = table.column_names.index(column)
        values = table.column(idx).combine_chunks()
        hit = pc.fill_null(pc.match_substring_regex(values, pattern=anything), False)
        rows = pc.indices_nonzero(hit)
        if len(rows) == 0:
            continue
        subset = values.take(rows)
        for name, regex in named.items():
            found = pc.sum(pc.count_substring_regex(subset, pattern=regex)).as_py() or 0
            if found:
                counts[name] += found
                subset = pc.replace_substring_regex(subset, pattern=regex, replacement=f"[{name.upper()}]")
        positions = pc.cumulative_sum(pc.cast(hit, pa.int64()))           # row -> 1 + its index in subset
        scattered = subset.take(pc.max_element_wise(pc.subtract(positions, 1), 0))
        table = table.set_column(idx, column, pc.if_else(hit, scattered, values))
    return table, counts


def scrub_json(node, extra: dict[str, str] | None = None):
    """``node`` (JSON-like: dicts, lists, strings, numbers) with every string value scrubbed; keys are kept. For the
    texts a report or an export writes (evaluation examples, responses), which may come from outside the clean
    snapshot (``evaluate.golden_set``).

    >>> scrub_json({"prompt": [{"content": "call +1 415 555 0100"}], "n": 3})
    {'prompt': [{'content': 'call [PHONE]'}], 'n': 3}
    """
    texts: list[str] = []

    def collect(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                collect(v)

    collect(node)
    if not texts:
        return node
    table, _ = scrub(pa.table({"text": pa.array(texts, pa.string())}), extra, columns=("text",))
    clean = iter(table.column(0).to_pylist())

    def rebuild(x):
        if isinstance(x, str):
            return next(clean)
        if isinstance(x, dict):
            return {k: rebuild(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [rebuild(v) for v in x]
        return x

    return rebuild(node)
