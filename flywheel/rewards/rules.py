"""Rule graders: deterministic checks of a completion, each ``fn(prompts, completions, **context) -> list[float]``.

A rule is built by a factory (``json_schema(schema)``) and returns a ``RuleGrader``: calling it gives the scores,
``.grade(...)`` gives ``(score, reason)`` pairs. Scores are in [0, 1] (``length`` and ``fuzzy_match`` are graded,
the rest pass/fail). ``prompts`` are lists of OpenAI chat messages; ``context`` carries per-row columns such as
``references`` (list[str]) for the match rules.

>>> json_valid()([[], []], ['{"a": 1}', 'not json'])
[1.0, 0.0]
"""
from __future__ import annotations

import ast
import difflib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[list[dict], str, dict], "tuple[float, str]"]


@dataclass(frozen=True)
class RuleGrader:
    """A named per-row check lifted to the batch grader signature."""

    name: str
    check: Check

    def grade(self, prompts: list[list[dict]], completions: list[str], **context: Any) -> list[tuple[float, str]]:
        if len(prompts) != len(completions):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(completions)} completions")
        rows = [{k: v[i] for k, v in context.items() if isinstance(v, (list, tuple))} for i in range(len(completions))]
        return [self.check(p, c if isinstance(c, str) else "", row) for p, c, row in zip(prompts, completions, rows)]

    def __call__(self, prompts: list[list[dict]], completions: list[str], **context: Any) -> list[float]:
        return [score for score, _ in self.grade(prompts, completions, **context)]


def last_user_text(prompt: list[dict]) -> str:
    """Content of the last user message ('' when there is none)."""
    for message in reversed(prompt or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # multimodal parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return content or ""
    return ""


def _parse_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except (json.JSONDecodeError, TypeError) as e:
        return None, f"invalid JSON: {e}"


def json_valid() -> RuleGrader:
    """1 when the whole completion parses as JSON.

    >>> json_valid().grade([[]], ['{"intent": '])[0][0]
    0.0
    """
    def check(prompt, completion, row):
        _, err = _parse_json(completion.strip())
        return (0.0, err) if err else (1.0, "valid JSON")
    return RuleGrader("json_valid", check)


def json_schema(schema: dict) -> RuleGrader:
    """1 when the completion is JSON valid against ``schema`` (JSON Schema, draft 2020-12).

    >>> s = {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["refund"]}}}
    >>> json_schema(s)([[], []], ['{"intent": "refund"}', '{"intent": "other"}'])
    [1.0, 0.0]
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)

    def check(prompt, completion, row):
        value, err = _parse_json(completion.strip())
        if err:
            return 0.0, err
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "<root>"
            return 0.0, f"schema: {where}: {errors[0].message}"
        return 1.0, "matches schema"
    return RuleGrader("json_schema", check)


def regex(pattern: str, must_match: bool = True, flags: str = "") -> RuleGrader:
    """1 when ``pattern`` is found (``must_match``) or absent (``must_match=False``).

    >>> regex(r"^\\{.*\\}$")([[], []], ['{"a": 1}', 'hello'])
    [1.0, 0.0]
    """
    compiled = re.compile(pattern, sum(getattr(re, f.upper()) for f in flags))

    def check(prompt, completion, row):
        found = compiled.search(completion) is not None
        ok = found == must_match
        return (1.0 if ok else 0.0), f"pattern {'found' if found else 'not found'}"
    return RuleGrader("regex", check)


def length(min_chars: int = 0, max_chars: int | None = None, unit: str = "chars") -> RuleGrader:
    """1 inside [min, max]; outside, decays linearly to 0 at twice the distance (``unit``: chars | words).

    >>> length(2, 10)([[], [], []], ["hello", "", "x" * 15])
    [1.0, 0.0, 0.5]
    """
    def check(prompt, completion, row):
        n = len(completion.split()) if unit == "words" else len(completion)
        if n < min_chars:
            return max(0.0, n / min_chars) if min_chars else 0.0, f"{n} {unit} < {min_chars}"
        if max_chars is not None and n > max_chars:
            return max(0.0, 1.0 - (n - max_chars) / max(max_chars, 1)), f"{n} {unit} > {max_chars}"
        return 1.0, f"{n} {unit}"
    return RuleGrader("length", check)


def vocabulary(required: list[str] = (), banned: list[str] = (), case_sensitive: bool = False) -> RuleGrader:
    """Share of ``required`` terms present, 0 if any ``banned`` term occurs (whole words, tone and business rules).

    >>> vocabulary(required=["order"], banned=["stupid"])([[], [], []], ["your order", "ok", "stupid order"])
    [1.0, 0.0, 0.0]
    """
    flags = 0 if case_sensitive else re.IGNORECASE

    def word(term: str) -> re.Pattern:
        return re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", flags)
    req, ban = [(t, word(t)) for t in required], [(t, word(t)) for t in banned]

    def check(prompt, completion, row):
        hit = [t for t, p in ban if p.search(completion)]
        if hit:
            return 0.0, f"banned: {', '.join(hit)}"
        missing = [t for t, p in req if not p.search(completion)]
        score = 1.0 - len(missing) / len(req) if req else 1.0
        return score, f"missing: {', '.join(missing)}" if missing else "vocabulary ok"
    return RuleGrader("vocabulary", check)


def python_syntax(strip_fences: bool = True) -> RuleGrader:
    """1 when the completion (or its first ```python fence) parses with ``ast.parse``.

    >>> python_syntax()([[], []], ["def f(x):\\n    return x", "def f(:"])
    [1.0, 0.0]
    """
    fence = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

    def check(prompt, completion, row):
        code = completion
        m = fence.search(completion) if strip_fences else None
        if m:
            code = m.group(1)
        try:
            ast.parse(code)
        except SyntaxError as e:
            return 0.0, f"syntax error line {e.lineno}: {e.msg}"
        return 1.0, "parses"
    return RuleGrader("python_syntax", check)


def _reference(row: dict, key: str, name: str) -> str:
    if key not in row:
        raise ValueError(f"{name}: needs a per-row context column {key!r} (list of reference strings)")
    return "" if row[key] is None else str(row[key])


def exact_match(reference_key: str = "references", normalize: bool = True) -> RuleGrader:
    """1 when the completion equals the reference (whitespace and case folded when ``normalize``).

    >>> exact_match()([[], []], ["Paris ", "Lyon"], references=["paris", "Paris"])
    [1.0, 0.0]
    """
    def norm(s: str) -> str:
        return " ".join(s.split()).casefold() if normalize else s

    def check(prompt, completion, row):
        ok = norm(completion) == norm(_reference(row, reference_key, "exact_match"))
        return (1.0, "equal") if ok else (0.0, "differs from reference")
    return RuleGrader("exact_match", check)


def fuzzy_match(reference_key: str = "references") -> RuleGrader:
    """Similarity ratio in [0, 1] between completion and reference (``difflib``).

    >>> fuzzy_match()([[]], ["colour"], references=["color"])
    [0.909]
    """
    def check(prompt, completion, row):
        ratio = difflib.SequenceMatcher(None, completion, _reference(row, reference_key, "fuzzy_match")).ratio()
        return round(ratio, 3), f"similarity {ratio:.3f}"
    return RuleGrader("fuzzy_match", check)


def extract_compare(pattern: str, source: str = "last_user", group: int = 0) -> RuleGrader:
    """1 when the matches of ``pattern`` in the completion equal those in the prompt (as sets, non-empty).

    ``source``: ``last_user`` (last user message), ``prompt`` (every message) or a context column name.
    Example: the 6-digit order id in the answer must be the one the customer wrote.

    >>> g = extract_compare(r"\\b\\d{6}\\b")
    >>> p = [{"role": "user", "content": "where is order 123456?"}]
    >>> g([p, p, p], ['{"order_id": "123456"}', '{"order_id": "123457"}', '{}'])
    [1.0, 0.0, 0.0]
    """
    compiled = re.compile(pattern)

    def found(text: str) -> set[str]:
        return {m.group(group) for m in compiled.finditer(text or "")}

    def check(prompt, completion, row):
        if source == "last_user":
            expected = found(last_user_text(prompt))
        elif source == "prompt":
            expected = found(" ".join(str(m.get("content") or "") for m in prompt or []))
        else:
            expected = found(_reference(row, source, "extract_compare"))
        got = found(completion)
        if not expected:
            return 0.0, "nothing to compare: pattern not found in the source"
        if got == expected:
            return 1.0, f"matches {sorted(expected)}"
        return 0.0, f"expected {sorted(expected)}, got {sorted(got)}"
    return RuleGrader("extract_compare", check)


# Answers that fool LLM judges ("master keys", Zhao et al. 2025): reasoning openers and bare punctuation.
MASTER_KEYS = (
    "thought process", "let's solve this problem step by step", "let's think step by step", "solution",
    "answer", "step 1", "first", "sure", "ok", "okay", "here is the answer", "the answer is", "解", "答案",
)
_NO_WORD = re.compile(r"^[\W_]*$", re.UNICODE)
_LEADING = re.compile(r"^[\W_]+")


def fold(text: str) -> str:
    """Text as a master-key match sees it: NFKC (full-width and compatibility forms to plain ones), invisible format
    characters (zero-width, bidi controls) removed, leading punctuation and Markdown (``**``, ``>``, quotes) stripped.

    >>> fold("**Ｔｈｏｕｇｈｔ\u200b process:**")
    'Thought process:**'
    """
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _LEADING.sub("", text.strip())


def _bare_key(text: str, max_key_chars: int) -> str | None:
    if len(text) <= max_key_chars:
        core = re.sub(r"[\s\W_]+$", "", text).strip().casefold()
        for key in MASTER_KEYS:
            if core == key or core.rstrip(".:") == key:
                return f"master key: {key}"
    return None


def degenerate_reason(completion: str, max_key_chars: int = 48) -> str | None:
    """Why a completion is degenerate (empty, punctuation only, a bare master key, also disguised by Markdown,
    full-width letters or zero-width characters: ``fold``), or None.

    >>> degenerate_reason("Thought process:"), degenerate_reason('{"intent": "refund"}')
    ('master key: thought process', None)
    >>> degenerate_reason("> *Let's think step by step*")
    "master key: let's think step by step (disguised)"
    """
    text = (completion or "").strip()
    if not text:
        return "empty"
    if _NO_WORD.match(text):
        return "punctuation only"
    if reason := _bare_key(text, max_key_chars):
        return reason
    folded = _bare_key(fold(text), max_key_chars)
    return f"{folded} (disguised)" if folded else None


def not_degenerate() -> RuleGrader:
    """0 for degenerate answers (see ``degenerate_reason``), else 1; the judge's pre-check.

    >>> not_degenerate()([[], [], []], ["...", "Solution:", "Your refund is on its way."])
    [0.0, 0.0, 1.0]
    """
    def check(prompt, completion, row):
        reason = degenerate_reason(completion)
        return (0.0, reason) if reason else (1.0, "ok")
    return RuleGrader("not_degenerate", check)


RULES: dict[str, Callable[..., RuleGrader]] = {
    f.__name__: f for f in (json_valid, json_schema, regex, length, vocabulary, python_syntax, exact_match,
                            fuzzy_match, extract_compare, not_degenerate)
}


def build_rule(params: dict[str, Any], where: str = "params") -> RuleGrader:
    """A rule from config: ``{"check": "regex", "pattern": "..."}``; errors name the bad key."""
    params = dict(params)
    name = params.pop("check", None)
    if name not in RULES:
        raise ValueError(f"{where}.check: must be one of {sorted(RULES)}, got {name!r}")
    try:
        return RULES[name](**params)
    except TypeError as e:
        raise ValueError(f"{where}: bad arguments for rule {name!r}: {e}") from None
    except Exception as e:  # bad regex, bad schema
        raise ValueError(f"{where}: rule {name!r} cannot be built: {e}") from None
