"""The judge's pre-check: degenerate answers and master keys, also when disguised.

``flywheel.rewards.rules.degenerate_reason`` matches a bare master key ("Thought process:", "Solution") exactly, so
``**Thought process:**``, ``Thought<zero-width space> process:``, full-width ``Ｓｏｌｕｔｉｏｎ`` or a no-break space
slipped past it to the judge, which is what a master key wants. The pre-check also looks at the answer folded:
NFKC (full-width and compatibility forms to plain ones), invisible format characters (zero-width, bidi controls)
removed, leading punctuation and Markdown (``**``, ``>``, quotes, bullets) stripped.
"""
from __future__ import annotations

import re
import unicodedata

from flywheel.rewards.rules import degenerate_reason

_LEADING = re.compile(r"^[\W_]+")


def fold(text: str) -> str:
    """The answer as a master-key match sees it.

    >>> fold("**Ｔｈｏｕｇｈｔ\\u200b process:**")
    'Thought process:**'
    """
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _LEADING.sub("", text.strip())


def precheck_reason(completion: str) -> str | None:
    """Why the judge gives ``completion`` the rubric's minimum without a request, or None.

    >>> precheck_reason("> *Let's think step by step*"), precheck_reason('{"intent": "refund"}')
    ("master key: let's think step by step (disguised)", None)
    """
    reason = degenerate_reason(completion)
    if reason:
        return reason
    folded = degenerate_reason(fold(completion))
    return f"{folded} (disguised)" if folded else None
