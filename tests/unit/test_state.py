"""The message state (sendtrack/state.py) is declared once: every key the rules and the engine read
or write on a state is one MessageState declares, and the states they build have no other."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_type_hints

import orjson

from schemas.models import Callback, SendRequest
from sendtrack import status
from sendtrack.state import MessageState, new_state

ROOT = Path(__file__).resolve().parents[2]
DECLARED = set(get_type_hints(MessageState))
STATE_NAMES = {"state"}  # the variable that holds a message state in sendtrack/status.py and agents/engine.py


def keys_used(path: Path) -> set[str]:
    """String keys used on a variable named `state`: state["k"], state.get("k"), .setdefault, .pop."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in STATE_NAMES \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            found.add(node.slice.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in STATE_NAMES \
                and node.func.attr in ("get", "setdefault", "pop") and node.args \
                and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) \
                and any(isinstance(c, ast.Name) and c.id in STATE_NAMES for c in node.comparators):
            found.add(node.left.value)  # "k" in state
    return found


def test_the_rules_and_the_engine_use_only_declared_keys():
    used = set().union(*(keys_used(ROOT / path) for path in (
        "sendtrack/status.py", "sendtrack/state.py", "sendtrack/sweeps.py", "agents/engine.py")))
    assert used, "the scan found no state keys: it no longer sees how states are used"
    assert used <= DECLARED, f"state keys used but not declared in MessageState: {sorted(used - DECLARED)}"
    assert {"req", "ms", "ev", "held", "fail", "eng", "rh", "off", "t", "hi", "pm"} <= used


def test_a_state_built_by_the_rules_has_only_declared_keys_and_survives_its_encoding():
    state = new_state()
    req = SendRequest(message_id="m1", action="email", customer_id="c", requested_at=1_780_000_000_000,
                      provider="sendgrid")
    status.apply_request(state, req, 1_780_000_000_500)
    for i, (st, extra) in enumerate([("delivered", {}), ("opened", {"url": "https://x", "is_machine": True}),
                                     ("failed", {"reason_code": "550", "reason": "no such user"})]):
        cb = Callback(event_id=f"e{i}", occurred_at=1_780_000_001_000 + i, message_id="m1", status=st, **extra)
        status.apply_callback(state, cb, 1_780_000_002_000)
    assert set(state) <= DECLARED, sorted(set(state) - DECLARED)
    again = orjson.loads(orjson.dumps(state))
    assert again == state  # JSON-only values: what the changelog holds is what the engine had


def test_a_state_of_the_first_layout_still_loads():
    """A state as the first version stored it (only req, ms, ev, held) takes new callbacks."""
    first = {"req": {"message_id": "m1", "action": "sms", "customer_id": "c", "requested_at": 1_780_000_000_000},
             "ms": {"sent": [1_780_000_000_000, False, "@request"]}, "ev": [], "held": []}
    state = orjson.loads(orjson.dumps(first))
    out = status.apply_callback(state, Callback(event_id="d1", occurred_at=1_780_000_001_000, message_id="m1",
                                                status="delivered"), 1_780_000_002_000)
    assert sorted(c.status for c in out.changes) == ["delivered", "processing"]
    assert state["ms"]["sent"] == first["ms"]["sent"] and set(state["ms"]) == {"sent", "processing", "delivered"}
