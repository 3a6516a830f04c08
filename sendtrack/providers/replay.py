"""Memory of single-use signature tokens (Mailgun), each kept while its signature could still verify."""

from __future__ import annotations

import enum
import hashlib
import heapq
from dataclasses import dataclass

# About 250 bytes a token: 100,000 tokens hold ~25 MB, i.e. 160 verified requests a second for the
# 10 minutes a token can live (its timestamp may be up to the window ahead, and lives a window after).
DEFAULT_CAPACITY = 100_000


@dataclass(frozen=True, slots=True)
class Nonce:
    """A token the provider signs once per request, and until when its signature can verify."""

    key: str  # provider-scoped, e.g. "mailgun:<token>"
    expires_at: int  # ms: the signed timestamp + the window; after it the timestamp alone refuses it


class Use(enum.Enum):
    """What presenting a token again means."""

    FIRST = "first"  # never seen while live: accept
    REPEAT = "repeat"  # seen with the very same body (a provider retry of an accepted request)
    REPLAY = "replay"  # seen with another body: a captured signature around a forged body
    FULL = "full"  # the memory is full of live tokens: it cannot tell


def fingerprint(body: bytes) -> str:
    """A short digest of a request body, to tell a repeat from a forged body."""
    return hashlib.sha256(body).hexdigest()[:32]


class SeenTokens:
    """Tokens seen recently, bounded; a full memory refuses new tokens rather than forget live ones."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._live: dict[str, tuple[int, str]] = {}  # key -> (expires_at, body fingerprint)
        self._expiries: list[tuple[int, str]] = []  # heap of (expires_at, key), stale entries skipped

    def __len__(self) -> int:
        return len(self._live)

    def first_use(self, nonce: Nonce, body_fingerprint: str, now_ms: int) -> Use:
        """Remember the token if it is new; otherwise say how it was seen before."""
        self._expire(now_ms)
        previous = self._live.get(nonce.key)
        if previous is not None:
            return Use.REPEAT if previous[1] == body_fingerprint else Use.REPLAY
        if len(self._live) >= self._capacity:
            return Use.FULL
        self._live[nonce.key] = (nonce.expires_at, body_fingerprint)
        heapq.heappush(self._expiries, (nonce.expires_at, nonce.key))
        return Use.FIRST

    def forget(self, nonce: Nonce) -> None:
        """Release a token whose request was not accepted after all (e.g. it could not be published)."""
        self._live.pop(nonce.key, None)

    def _expire(self, now_ms: int) -> None:
        while self._expiries and self._expiries[0][0] < now_ms:
            expires_at, key = heapq.heappop(self._expiries)
            entry = self._live.get(key)
            if entry is not None and entry[0] == expires_at:
                del self._live[key]
