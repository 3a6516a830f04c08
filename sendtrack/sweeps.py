"""What the sweeps expire and evict, without Kafka (agents/engine.py walks the tables a slice at a
time and applies these choices).

* A held callback waits `orphan_ttl_ms` for its request (or its provider-id mapping); then it is a
  dead letter (`orphan`), and a message state that never got its request goes with it.
* An entry untouched for `retention_ms` is evicted: message states, provider-id mappings, Messenger
  recipients. A message state that holds callbacks is never evicted silently: it is the orphan
  sweep's, whatever its age.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from sendtrack.state import MessageState


def orphan_due(held_since: Optional[int], now: int, orphan_ttl_ms: int) -> bool:
    """Callbacks held since `held_since` (None: no longer held) have waited long enough to expire."""
    return held_since is not None and now - held_since >= orphan_ttl_ms


def drop_orphaned_state(state: Optional[MessageState]) -> bool:
    """An expiring message state goes whole only if its request never came (it then holds only the
    callbacks that expire); a state with its request keeps everything else."""
    return state is not None and state["req"] is None


def message_touched(state: MessageState, now: int) -> int:
    """When a message state was last touched, for eviction: now while it holds callbacks."""
    return now if state.get("held") else state.get("t", 0)


def mapping_touched(mapping: list) -> int:
    return mapping[1]


def recipient_touched(entry: dict[str, Any]) -> int:
    return entry["t"]


def stale(value: Any, touched: Callable[[Any], int], now: int, retention_ms: int) -> bool:
    return now - touched(value) > retention_ms
