"""The status rules of CONTRACT §1 and §2, checked against the pure core in sendtrack/status.py.

The expected side of every test is written out from the contract, never imported from the code.
"""

from __future__ import annotations

import dataclasses
import itertools

import orjson
import pytest

from schemas.models import MESSAGE_ID_MAX, TEXT_MAX, Callback, SendRequest, StatusChange
from sendtrack import status as core
from sendtrack.topics import RECORD_BUDGET_BYTES

# ---------------------------------------------------------------------------------------------
# The contract, written out literally (CONTRACT §1 and §2.2).
# ---------------------------------------------------------------------------------------------

CONTRACT_ACTIONS: dict[str, set[str]] = {
    "email": {"sent", "processing", "delivered", "failed", "opened", "clicked", "unsubscribed",
              "complained", "bounced"},
    "zalo_oa": {"sent", "processing", "delivered", "failed", "opened", "clicked"},
    "zns": {"sent", "processing", "delivered", "failed"},
    "messenger": {"sent", "delivered", "failed", "opened", "clicked"},
    "sms": {"sent", "processing", "delivered", "failed", "clicked"},
    "ai_call": {"sent", "delivered", "failed", "answered"},
    "http_request": {"succeeded", "failed"},
    "timer": {"sent"},
    "voucher": {"sent", "processing", "failed", "delivered"},
    "sync": {"sent", "succeeded", "failed"},
    "start_flow": {"sent", "succeeded", "failed"},
    "other": {"sent", "succeeded", "failed"},
}

CONTRACT_STATUSES = ["sent", "processing", "delivered", "failed", "opened", "clicked",
                     "unsubscribed", "complained", "bounced", "answered", "succeeded"]

# §2.2: reaching the key implies reaching each value.
CONTRACT_IMPLIES: dict[str, set[str]] = {
    "delivered": {"processing"},
    "opened": {"delivered"},
    "clicked": {"opened", "delivered"},
    "answered": {"delivered"},
    "complained": {"delivered"},
    "unsubscribed": {"delivered"},
    "bounced": {"failed"},
}

EVERY_ACTION_AND_STATUS = list(itertools.product(CONTRACT_ACTIONS, CONTRACT_STATUSES))
ALLOWED_PAIRS = [(a, s) for a, s in EVERY_ACTION_AND_STATUS if s in CONTRACT_ACTIONS[a]]
FORBIDDEN_PAIRS = [(a, s) for a, s in EVERY_ACTION_AND_STATUS if s not in CONTRACT_ACTIONS[a]]


def implied_by(status: str, action: str) -> set[str]:
    """Everything `status` implies per §2.2, transitively, kept only within the action's set."""
    out: set[str] = set()
    todo = list(CONTRACT_IMPLIES.get(status, ()))
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(CONTRACT_IMPLIES.get(s, ()))
    return {s for s in out if s in CONTRACT_ACTIONS[action]}


# ---------------------------------------------------------------------------------------------
# Helper constructors
# ---------------------------------------------------------------------------------------------

T0 = 1_700_000_000_000  # requested_at of every request below (ms)
NOW = 1_700_000_999_000  # the processing time handed to the core


def make_request(action: str = "email", message_id: str = "msg-1", **extra) -> SendRequest:
    fields = dict(message_id=message_id, action=action, customer_id="cust-1", requested_at=T0,
                  provider="prov", flow_id="flow-1", campaign_id="camp-1", step_id="step-1")
    fields.update(extra)
    return SendRequest(**fields)


def make_callback(status: str | None, event_id: str, at: int, message_id: str = "msg-1",
                  **extra) -> Callback:
    return Callback(event_id=event_id, occurred_at=at, status=status, message_id=message_id, **extra)


class Message:
    """One message's state plus every status change the core emitted for it, in order."""

    def __init__(self, action: str = "email", message_id: str = "msg-1") -> None:
        self.action = action
        self.message_id = message_id
        self.state = core.new_state()
        self.changes: list[StatusChange] = []
        self._events = 0

    def request(self, **extra) -> core.Outcome:
        out = core.apply_request(self.state, make_request(self.action, self.message_id, **extra), NOW)
        self.changes.extend(out.changes)
        return out

    def callback(self, status: str | None = None, event_id: str | None = None, at: int | None = None,
                 **extra) -> core.Outcome:
        self._events += 1
        event_id = event_id if event_id is not None else f"ev-{self._events}"
        at = at if at is not None else T0 + 1_000 * self._events
        out = core.apply_callback(self.state, make_callback(status, event_id, at, self.message_id, **extra),
                                  NOW, origin=("provider-callbacks", 0, self._events))
        self.changes.extend(out.changes)
        return out

    @property
    def milestones(self) -> dict[str, StatusChange]:
        """status -> the milestone change that reached it."""
        return {c.status: c for c in self.changes if c.kind == "milestone"}

    @property
    def current(self) -> str:
        """The current status as the status-changes topic shows it (the latest change's)."""
        emitted = self.changes[-1].current_status if self.changes else ""
        # The topic and the pure function must agree (the `messages` table uses the latter's rank).
        assert emitted == core.current_status(self.milestones), (emitted, sorted(self.milestones))
        return emitted


def fresh(action: str) -> Message:
    msg = Message(action)
    msg.request()
    return msg


# ---------------------------------------------------------------------------------------------
# §1: every action x every status
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "status"), ALLOWED_PAIRS)
def test_an_allowed_status_reaches_its_milestone(action, status):
    msg = fresh(action)
    out = msg.callback(status, event_id="ev-x", at=T0 + 5_000)

    assert out.invalid is None
    assert status in msg.milestones
    if status != "sent":  # sent was already reached by the request itself
        change = msg.milestones[status]
        assert change.inferred is False
        assert change.occurred_at == T0 + 5_000
        assert change.event_id == "ev-x"
        assert change.action == action


@pytest.mark.parametrize(("action", "status"), FORBIDDEN_PAIRS)
def test_a_status_outside_the_actions_set_is_status_not_allowed(action, status):
    msg = fresh(action)
    before = dict(msg.milestones)
    out = msg.callback(status)

    assert out.invalid is not None
    assert out.invalid.error_type == "status_not_allowed"
    assert out.changes == []
    assert msg.milestones == before


# ---------------------------------------------------------------------------------------------
# §2.2: implied milestones
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "status"), ALLOWED_PAIRS)
def test_implied_milestones_are_inferred_at_the_implying_events_time(action, status):
    msg = fresh(action)
    out = msg.callback(status, event_id="ev-x", at=T0 + 7_000)

    reached_by_request = {"sent"} & CONTRACT_ACTIONS[action]
    expected_inferred = implied_by(status, action) - reached_by_request
    got_inferred = {c.status: c for c in out.changes if c.inferred}
    assert set(got_inferred) == expected_inferred
    for change in got_inferred.values():
        assert change.kind == "milestone"
        assert change.occurred_at == T0 + 7_000


def test_an_sms_click_implies_delivered_and_processing_but_not_opened():
    msg = fresh("sms")
    out = msg.callback("clicked", at=T0 + 3_000)

    assert {c.status: c.inferred for c in out.changes} == {
        "clicked": False, "delivered": True, "processing": True}
    assert "opened" not in msg.milestones


def test_an_email_click_implies_opened_delivered_and_processing():
    msg = fresh("email")
    out = msg.callback("clicked", at=T0 + 3_000)

    assert {c.status: c.inferred for c in out.changes} == {
        "clicked": False, "opened": True, "delivered": True, "processing": True}
    assert {c.occurred_at for c in out.changes} == {T0 + 3_000}


def test_a_bounce_implies_failed():
    msg = fresh("email")
    msg.callback("bounced", at=T0 + 3_000, bounce_type="hard", reason_code="550")

    assert msg.milestones["failed"].inferred is True
    assert msg.milestones["failed"].occurred_at == T0 + 3_000


# ---------------------------------------------------------------------------------------------
# §2.1: sent on request
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", [a for a in CONTRACT_ACTIONS if "sent" in CONTRACT_ACTIONS[a]])
def test_the_request_reaches_sent_at_requested_at(action):
    msg = Message(action)
    out = msg.request()

    assert [c.status for c in out.changes] == ["sent"]
    sent = out.changes[0]
    assert sent.occurred_at == T0
    assert sent.inferred is False
    assert sent.previous_status == ""
    assert sent.current_status == "sent"
    assert sent.customer_id == "cust-1"


def test_an_http_request_has_no_status_until_its_result():
    msg = Message("http_request")
    out = msg.request()

    # One record announces the message (so it has a row in `messages`), with no status.
    assert [(c.kind, c.status, c.current_status, c.inferred) for c in out.changes] == [("request", "", "", False)]
    assert out.invalid is None
    assert msg.current == ""


# ---------------------------------------------------------------------------------------------
# §2.3: current status
# ---------------------------------------------------------------------------------------------


def test_email_failed_then_opened_is_opened():
    msg = fresh("email")
    msg.callback("failed")
    assert msg.current == "failed"
    msg.callback("opened")
    assert msg.current == "opened"


def test_email_opened_then_failed_stays_opened():
    msg = fresh("email")
    msg.callback("opened")
    msg.callback("failed")
    assert "failed" in msg.milestones
    assert msg.current == "opened"


def test_a_bounce_after_delivery_is_bounced():
    msg = fresh("email")
    msg.callback("delivered")
    msg.callback("bounced", bounce_type="hard")
    assert msg.current == "bounced"


def test_failed_and_bounced_is_bounced():
    msg = fresh("email")
    msg.callback("failed")
    msg.callback("bounced", bounce_type="soft")
    assert msg.current == "bounced"


def test_an_answered_call_outranks_a_failure():
    msg = fresh("ai_call")
    msg.callback("failed")
    msg.callback("answered")
    assert msg.current == "answered"


@pytest.mark.parametrize(("http_status", "current"), [(200, "succeeded"), (500, "failed"), (404, "failed")])
def test_http_request_result_from_http_status(http_status, current):
    msg = fresh("http_request")
    out = msg.callback(None, http_status=http_status)
    assert out.invalid is None
    assert msg.current == current


def test_http_request_200_then_500_is_failed():
    msg = fresh("http_request")
    msg.callback(None, http_status=200)
    msg.callback(None, http_status=500)
    assert set(msg.milestones) == {"succeeded", "failed"}
    assert msg.current == "failed"


@pytest.mark.parametrize(("http_status", "current"), [(200, "succeeded"), (503, "failed")])
def test_sync_result_from_http_status(http_status, current):
    msg = fresh("sync")
    msg.callback(None, http_status=http_status)
    assert msg.current == current


def test_http_status_alone_is_not_allowed_for_other_actions():
    msg = fresh("email")
    out = msg.callback(None, http_status=200)
    assert out.invalid is not None and out.invalid.error_type == "status_not_allowed"


@pytest.mark.parametrize("status", ["unsubscribed", "complained"])
def test_unsubscribed_and_complained_are_never_current(status):
    msg = fresh("email")
    msg.callback(status)
    assert status in msg.milestones
    assert msg.current == "delivered"  # what they imply, never themselves


@pytest.mark.parametrize("status", ["unsubscribed", "complained"])
def test_current_status_ignores_unsubscribed_and_complained(status):
    assert core.current_status({status}) == ""
    assert core.current_status({"sent", status}) == "sent"


@pytest.mark.parametrize(("reached", "current"), [
    (set(), ""),
    ({"sent"}, "sent"),
    ({"sent", "processing"}, "processing"),
    ({"sent", "processing", "delivered"}, "delivered"),
    ({"sent", "delivered", "opened"}, "opened"),
    ({"sent", "delivered", "answered"}, "answered"),
    ({"sent", "delivered", "opened", "clicked"}, "clicked"),
    ({"sent", "succeeded"}, "succeeded"),
    ({"sent", "delivered", "failed"}, "failed"),
    ({"sent", "delivered", "failed", "bounced"}, "bounced"),
    ({"sent", "bounced"}, "bounced"),
    ({"succeeded", "failed"}, "failed"),
    ({"sent", "failed", "opened"}, "opened"),
    ({"sent", "failed", "bounced", "clicked"}, "clicked"),
    ({"sent", "failed", "answered"}, "answered"),
])
def test_current_status_precedence(reached, current):
    assert core.current_status(reached) == current


# ---------------------------------------------------------------------------------------------
# §2.4: idempotence and engagement
# ---------------------------------------------------------------------------------------------


def test_a_callback_with_an_applied_event_id_changes_nothing():
    msg = fresh("email")
    msg.callback("delivered", event_id="ev-7")
    before = list(msg.changes)

    again = msg.callback("delivered", event_id="ev-7")
    assert again.duplicate is True
    assert again.changes == []
    assert msg.changes == before


def test_an_applied_event_id_is_ignored_even_with_other_content():
    msg = fresh("email")
    msg.callback("delivered", event_id="ev-7")
    again = msg.callback("clicked", event_id="ev-7")
    assert again.changes == []
    assert "clicked" not in msg.milestones


def test_a_repeated_open_with_a_new_event_id_is_one_engagement_event():
    msg = fresh("email")
    msg.callback("opened", event_id="open-1")
    out = msg.callback("opened", event_id="open-2", at=T0 + 9_000, is_machine=True)

    assert len(out.changes) == 1
    change = out.changes[0]
    assert change.kind == "engagement"
    assert change.status == "opened"
    assert change.event_id == "open-2"
    assert change.occurred_at == T0 + 9_000
    assert change.is_machine is True
    assert change.change_id != msg.milestones["opened"].change_id


def test_a_repeated_click_keeps_its_own_url():
    msg = fresh("email")
    msg.callback("clicked", event_id="click-1", url="https://a.example")
    out = msg.callback("clicked", event_id="click-2", url="https://b.example")
    assert [(c.kind, c.url) for c in out.changes] == [("engagement", "https://b.example")]
    assert msg.milestones["clicked"].url == "https://a.example"


def test_a_real_open_after_an_inferred_open_reaches_no_milestone():
    msg = fresh("email")
    msg.callback("clicked", event_id="click-1", at=T0 + 1_000)
    out = msg.callback("opened", event_id="open-1", at=T0 + 2_000)

    assert [c for c in out.changes if c.kind == "milestone"] == []
    # The milestone stays as inference made it: inferred, at the click's time.
    replayed = {c.status: c for c in core.replay_changes(msg.state, "click-1", NOW)}
    assert replayed["opened"].inferred is True
    assert replayed["opened"].occurred_at == T0 + 1_000


def test_a_real_open_after_an_inferred_open_is_still_an_engagement_event():
    msg = fresh("email")
    msg.callback("clicked", event_id="click-1")
    out = msg.callback("opened", event_id="open-1", is_machine=False)
    assert [(c.kind, c.status, c.event_id, c.inferred) for c in out.changes] == [
        ("engagement", "opened", "open-1", False)]


# ---------------------------------------------------------------------------------------------
# §2.6: callbacks before their request
# ---------------------------------------------------------------------------------------------


def test_a_callback_before_its_request_is_held():
    msg = Message("email")
    out = msg.callback("delivered", event_id="ev-early", at=T0 + 4_000)

    assert out.held is True
    assert out.changes == []
    assert out.invalid is None


def test_a_held_callback_is_applied_when_the_request_arrives():
    msg = Message("email")
    msg.callback("delivered", event_id="ev-early", at=T0 + 4_000)
    out = msg.request()

    assert {c.status for c in out.changes} == {"sent", "delivered", "processing"}
    delivered = next(c for c in out.changes if c.status == "delivered")
    assert delivered.occurred_at == T0 + 4_000
    assert delivered.event_id == "ev-early"
    assert msg.current == "delivered"


def test_a_held_callback_repeated_before_the_request_is_applied_once():
    msg = Message("email")
    msg.callback("clicked", event_id="click-1")
    second = msg.callback("clicked", event_id="click-1")
    out = msg.request()

    assert second.held is False and second.duplicate is True
    assert [c.status for c in out.changes].count("clicked") == 1
    assert all(c.kind == "milestone" for c in out.changes)


def test_a_held_callback_with_a_status_not_allowed_is_rejected_when_the_request_arrives():
    msg = Message("sms")
    msg.callback("opened", event_id="ev-bad")  # SMS has no opened
    msg.callback("delivered", event_id="ev-good")
    out = msg.request()

    assert len(out.rejected) == 1
    entry, invalid = out.rejected[0]
    assert entry["cb"]["event_id"] == "ev-bad"
    assert entry["origin"] == ("provider-callbacks", 0, 1)  # where it was read, for the dead letter
    assert invalid.error_type == "status_not_allowed"
    assert "delivered" in msg.milestones and "opened" not in msg.milestones


# ---------------------------------------------------------------------------------------------
# §2.1: repeated requests
# ---------------------------------------------------------------------------------------------


def test_a_repeated_identical_request_is_a_duplicate():
    msg = fresh("email")
    out = msg.request()
    assert out.duplicate is True
    assert out.changes == []
    assert out.invalid is None


def test_a_repeated_request_with_other_content_is_conflicting_and_the_first_stands():
    msg = fresh("email")
    out = msg.request(customer_id="someone-else", requested_at=T0 + 60_000)

    assert out.invalid is not None
    assert out.invalid.error_type == "conflicting_request"
    assert out.changes == []
    later = msg.callback("delivered")
    assert {c.customer_id for c in later.changes} == {"cust-1"}
    assert {c.requested_at for c in later.changes} == {T0}
    assert msg.milestones["sent"].occurred_at == T0


# ---------------------------------------------------------------------------------------------
# change_id and replay
# ---------------------------------------------------------------------------------------------


def test_change_id_is_deterministic():
    assert core.change_id("msg-1", "delivered") == core.change_id("msg-1", "delivered")
    assert core.change_id("msg-1", "opened", "ev-1") == core.change_id("msg-1", "opened", "ev-1")


def test_change_id_differs_per_status_message_and_event():
    ids = {core.change_id("msg-1", s) for s in CONTRACT_STATUSES}
    assert len(ids) == len(CONTRACT_STATUSES)
    assert core.change_id("msg-1", "sent") != core.change_id("msg-2", "sent")
    assert core.change_id("msg-1", "opened", "ev-1") != core.change_id("msg-1", "opened", "ev-2")
    assert core.change_id("msg-1", "opened", "ev-1") != core.change_id("msg-1", "opened")


def test_emitted_milestones_carry_the_change_id_of_message_and_status():
    msg = fresh("email")
    msg.callback("clicked")
    for status, change in msg.milestones.items():
        assert change.change_id == core.change_id("msg-1", status)


def _funnel(action: str, events: list[tuple[str, dict]]) -> tuple[Message, dict[str, list[StatusChange]]]:
    """Apply a request and callbacks; the changes each input caused, by its source id."""
    msg = Message(action)
    by_source = {core.REQUEST_SOURCE: msg.request().changes}
    for event_id, fields in events:
        by_source[event_id] = msg.callback(event_id=event_id, **fields).changes
    return msg, by_source


EMAIL_FUNNEL = [
    ("ev-deliv", dict(status="delivered")),
    ("ev-open", dict(status="opened", is_machine=True)),
    ("ev-click", dict(status="clicked", url="https://shop.example/x", is_machine=False)),
    ("ev-bounce", dict(status="bounced", bounce_type="soft", reason_code="421", reason="try later")),
]


def test_replay_rebuilds_the_same_change_ids():
    msg, by_source = _funnel("email", EMAIL_FUNNEL)
    for source, changes in by_source.items():
        milestones = [c for c in changes if c.kind == "milestone"]
        assert [c.change_id for c in core.replay_changes(msg.state, source, NOW)] == \
            [c.change_id for c in milestones], source


def test_replay_of_an_unknown_source_or_message_rebuilds_nothing():
    msg, _ = _funnel("email", EMAIL_FUNNEL)
    assert core.replay_changes(msg.state, "never-seen", NOW) == []
    assert core.replay_changes(core.new_state(), core.REQUEST_SOURCE, NOW) == []


def test_replay_rebuilds_the_same_status_changes():
    """After a crash the replayed record replaces the original (same change_id): it must be equal."""
    msg, by_source = _funnel("email", EMAIL_FUNNEL)
    differences = []
    for source, changes in by_source.items():
        original = [c for c in changes if c.kind == "milestone"]
        replayed = core.replay_changes(msg.state, source, NOW + 1)
        assert [c.status for c in replayed] == [c.status for c in original], source
        for before, after in zip(original, replayed):
            for f in dataclasses.fields(StatusChange):
                old, new = getattr(before, f.name), getattr(after, f.name)
                if f.name != "recorded_at" and old != new:
                    differences.append(f"{source}/{before.status}.{f.name}: {old!r} -> {new!r}")
    assert not differences, "replayed records differ:\n" + "\n".join(differences)


def test_replay_rebuilds_an_engagement_event():
    """A repeated click whose change was lost in a crash must not vanish from engagement_events."""
    msg = fresh("email")
    msg.callback("clicked", event_id="click-1", url="https://a.example")
    original = msg.callback("clicked", event_id="click-2", url="https://b.example").changes

    replayed = core.replay_changes(msg.state, "click-2", NOW)
    assert [(c.kind, c.change_id, c.url) for c in replayed] == \
        [(c.kind, c.change_id, c.url) for c in original]


# ---------------------------------------------------------------------------------------------
# §2.5: the failure reason does not depend on arrival order
# ---------------------------------------------------------------------------------------------


def test_the_failure_reason_does_not_depend_on_arrival_order():
    late_failure = ("ev-failed", dict(status="failed", at=T0 + 200_000, reason_code="timeout"))
    early_bounce = ("ev-bounce", dict(status="bounced", at=T0 + 100_000, reason_code="550",
                                      bounce_type="hard"))
    reasons = []
    for order in ([late_failure, early_bounce], [early_bounce, late_failure]):
        msg, _ = _funnel("email", order)
        # messages.reason_code is read from the latest record of the 'failed' milestone.
        reasons.append(msg.milestones["failed"].reason_code)
    assert reasons == ["550", "550"]


# ---------------------------------------------------------------------------------------------
# A message's state always fits in one record of its table's changelog (in bytes, not characters)
# ---------------------------------------------------------------------------------------------

# The longest text validation accepts, in the characters that take the most bytes in JSON: ids refuse
# control characters, so 4 bytes in UTF-8 (an emoji); other text, 6 (a control character, \u0001).
WIDE, ESCAPED = "📨", "\x01"


def widest_id(n: int, tag: str = "") -> str:
    return tag + WIDE * (n - len(tag))


def widest_callback(status: str, i: int, message_id: str) -> Callback:
    return Callback(event_id=widest_id(TEXT_MAX["event_id"], f"{i:05d}"), occurred_at=T0 + i, status=status,
                    message_id=message_id, provider=widest_id(TEXT_MAX["provider"]),
                    provider_message_id=widest_id(TEXT_MAX["provider_message_id"]),
                    reason_code=ESCAPED * TEXT_MAX["reason_code"], reason=ESCAPED * TEXT_MAX["reason"],
                    url=ESCAPED * TEXT_MAX["url"], is_machine=True,
                    bounce_type="hard" if status == "bounced" else None)


def widest_request(message_id: str) -> SendRequest:
    return SendRequest(message_id=message_id, action="email", customer_id=widest_id(TEXT_MAX["customer_id"]),
                       requested_at=T0, provider=widest_id(TEXT_MAX["provider"]),
                       recipient=widest_id(TEXT_MAX["recipient"]), flow_id=widest_id(TEXT_MAX["flow_id"]),
                       campaign_id=widest_id(TEXT_MAX["campaign_id"]), step_id=widest_id(TEXT_MAX["step_id"]),
                       workspace_id=widest_id(TEXT_MAX["workspace_id"]), attributes={"big": ESCAPED * 100_000})


def stored_size(message_id: str, state: dict) -> int:
    """Key and value of the state's changelog record, as agents/engine.py writes it."""
    return len(message_id.encode()) + len(orjson.dumps(state))


def with_engine_bookkeeping(state: dict, message_id: str) -> dict:
    """What agents/engine.py adds to a state, at its limits: up to 8 provider-id keys it registered,
    the last offset per input topic, the time it was touched, the held-index flag."""
    pkey = widest_id(TEXT_MAX["provider"]) + "\x1f" + widest_id(TEXT_MAX["provider_message_id"])
    return dict(state, pm=[pkey] * 8, off={f"{'t' * 240}.{name}": 2**63 - 1 for name in
                                          ("send-requests", "provider-callbacks", "sendtrack-routed")},
                t=2**63 - 1, hi=True)


def test_the_largest_state_after_the_request_fits_a_changelog_record():
    """Every part at its limit: the request, each of email's milestones reached by its own event
    (opened and clicked keep their URL), the failure reason, 20,000 event-id digests, and more
    repeated clicks than are kept for re-production."""
    message_id = widest_id(MESSAGE_ID_MAX)
    state = core.new_state()
    core.apply_request(state, widest_request(message_id), NOW)
    # Each reached by its own event, nearest first (so opened and clicked both keep their URL).
    statuses = ["processing", "delivered", "opened", "clicked", "failed", "bounced", "unsubscribed", "complained"]
    assert set(statuses) == CONTRACT_ACTIONS["email"] - {"sent"}
    for i, status in enumerate(statuses):
        assert core.apply_callback(state, widest_callback(status, i, message_id), NOW).invalid is None
    state["ev"] = [f"{i:016x}" for i in range(core.MAX_EVENT_IDS)]  # as many digests as are kept
    for i in range(100, 200):
        out = core.apply_callback(state, widest_callback("clicked", i, message_id), NOW)
        assert [c.kind for c in out.changes] == ["engagement"]
    state = with_engine_bookkeeping(state, message_id)
    assert len(orjson.dumps(state["eng"])) <= core.ENGAGEMENT_MAX_BYTES
    assert stored_size(message_id, state) <= RECORD_BUDGET_BYTES, stored_size(message_id, state)


def test_the_largest_state_before_the_request_fits_a_changelog_record():
    message_id = widest_id(MESSAGE_ID_MAX)
    state = core.new_state()
    outcomes = [core.apply_callback(state, widest_callback("delivered", i, message_id), NOW,
                                    origin=["t" * 249, 2**31 - 1, 2**63 - 1]) for i in range(core.MAX_HELD)]
    held = [o for o in outcomes if o.held]
    refused = [o.invalid for o in outcomes if o.invalid is not None]
    assert held and refused and len(held) + len(refused) == core.MAX_HELD
    assert {r.error_type for r in refused} == {"too_many_held"}
    assert "bytes" in refused[0].error
    state = with_engine_bookkeeping(state, message_id)
    assert stored_size(message_id, state) <= RECORD_BUDGET_BYTES, stored_size(message_id, state)


def test_64_held_callbacks_of_long_multibyte_text_are_bounded_in_bytes():
    """MAX_HELD counts callbacks; 64 of long Vietnamese, emoji or control-character text took 1.3-2.6 MB."""
    for text in ("Người nhận không tồn tại. ", "📨🚫", "\x07"):
        msg = Message("email")
        outs = [msg.callback("delivered", reason=(text * 2048)[:2048], url=(text * 4096)[:4096])
                for _ in range(core.MAX_HELD)]
        assert any(o.held for o in outs)
        assert len(orjson.dumps(msg.state["held"])) <= core.HELD_MAX_BYTES
        # What was held is applied when the request arrives; what was refused is a dead letter.
        assert all(o.held or o.invalid.error_type == "too_many_held" for o in outs)
        assert "delivered" in {c.status for c in msg.request().changes}


def test_a_short_callback_is_held_up_to_the_count_limit():
    msg = Message("email")
    outs = [msg.callback("delivered") for _ in range(core.MAX_HELD + 1)]
    assert [o.held for o in outs] == [True] * core.MAX_HELD + [False]
    assert outs[-1].invalid.error_type == "too_many_held"
    assert f"{core.MAX_HELD} callbacks" in outs[-1].invalid.error


def test_70_clicks_keep_every_engagement_event_and_a_bounded_state():
    """Repeated clicks are kept for re-production after a crash: 64 with 4,096-character URLs took
    1.6 MB. The oldest go first; the newest can always be produced again."""
    msg = fresh("email")
    url = ESCAPED * TEXT_MAX["url"]
    outs = [msg.callback("clicked", event_id=f"click-{i}", url=url) for i in range(70)]
    assert [c.kind for o in outs for c in o.changes if c.status == "clicked"] == \
        ["milestone"] + ["engagement"] * 69
    kept = msg.state["eng"]
    assert 1 < len(kept) < 64 and len(orjson.dumps(kept)) <= core.ENGAGEMENT_MAX_BYTES
    assert list(kept)[-1] == "click-69"
    replayed = core.replay_changes(msg.state, "click-69", NOW)
    assert [(c.kind, c.url) for c in replayed] == [("engagement", url)]


def test_a_status_change_fits_a_record_whatever_its_text():
    message_id = widest_id(MESSAGE_ID_MAX)
    state = core.new_state()
    core.apply_request(state, widest_request(message_id), NOW)
    core.apply_callback(state, widest_callback("bounced", 1, message_id), NOW)
    changes = core.apply_callback(state, widest_callback("clicked", 2, message_id), NOW).changes
    changes += core.apply_callback(state, widest_callback("clicked", 3, message_id), NOW).changes
    largest = max(len(orjson.dumps(c)) + len(message_id.encode()) for c in changes)
    assert largest <= 64 * 1024  # far under RECORD_BUDGET_BYTES: bounded by TEXT_MAX alone
