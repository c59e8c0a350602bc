"""Champion / challenger routing: a sticky share of routing keys by a salted hash, and shadow mode.

A key (the user or session id from ``routing.key_headers``, else the request id) goes to the challenger when
``hash(salt, key)`` falls in the lowest ``challenger_share`` of the 64-bit range: the same key always gets the same
arm while the share and salt stay, and raising the share only adds keys to the canary (nobody flips back).

>>> r = Router(mode="canary", share=0.2)
>>> r.arm("user-42") == r.arm("user-42")
True
>>> Router(mode="off", share=1.0).arm("anyone")
'champion'
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"


def bucket(salt: str, key: str) -> float:
    """A uniform number in [0, 1) from ``salt`` and ``key`` (blake2b, 64 bits)."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


@dataclass
class Router:
    """Which arm answers a key. ``challenger_live`` is False while the registry has no distinct challenger."""

    mode: str = "off"  # off | canary | shadow
    share: float = 0.0
    salt: str = "flywheel"
    challenger_live: bool = True

    def in_canary(self, key: str) -> bool:
        return self.share > 0 and bucket(self.salt, key) < self.share

    def arm(self, key: str) -> Arm:
        """The arm whose answer the client gets."""
        if self.mode == "canary" and self.challenger_live and self.in_canary(key):
            return CHALLENGER
        return CHAMPION

    def shadow(self, key: str) -> bool:
        """Whether the challenger also answers this request, logged only (shadow mode)."""
        return self.mode == "shadow" and self.challenger_live and self.in_canary(key)


def routing_key(headers, key_headers: list[str], fallback: str) -> str:
    """The first present header of ``key_headers`` (prefixed with its name), else ``fallback`` (the request id)."""
    for name in key_headers:
        value = headers.get(name)
        if value:
            return f"{name}:{value}"
    return f"request:{fallback}"
