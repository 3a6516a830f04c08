"""Property tests of CONTRACT §2.5 (order and duplication do not matter) and the §2 invariants.

Random histories: one send request for a random action, callbacks whose statuses are drawn from the
action's set (and some from outside it), event ids drawn from a small pool so the same event recurs,
random occurred_at. Each history is applied in order and again shuffled with every record repeated
1-5 times (the request included, so callbacks often arrive before it and are held).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import Callback, SendRequest, StatusChange
from sendtrack import status as core

# ---------------------------------------------------------------------------------------------
# The contract, written out literally (CONTRACT §1, §2.2, §2.3).
# ---------------------------------------------------------------------------------------------

CONTRACT_ACTIONS: dict[str, frozenset[str]] = {
    "email": frozenset({"sent", "processing", "delivered", "failed", "opened", "clicked",
                        "unsubscribed", "complained", "bounced"}),
    "zalo_oa": frozenset({"sent", "processing", "delivered", "failed", "opened", "clicked"}),
    "zns": frozenset({"sent", "processing", "delivered", "failed"}),
    "messenger": frozenset({"sent", "delivered", "failed", "opened", "clicked"}),
    "sms": frozenset({"sent", "processing", "delivered", "failed", "clicked"}),
    "ai_call": frozenset({"sent", "delivered", "failed", "answered"}),
    "http_request": frozenset({"succeeded", "failed"}),
    "timer": frozenset({"sent"}),
    "voucher": frozenset({"sent", "processing", "failed", "delivered"}),
    "sync": frozenset({"sent", "succeeded", "failed"}),
    "start_flow": frozenset({"sent", "succeeded", "failed"}),
    "other": frozenset({"sent", "succeeded", "failed"}),
}
CONTRACT_STATUSES = ("sent", "processing", "delivered", "failed", "opened", "clicked",
                     "unsubscribed", "complained", "bounced", "answered", "succeeded")
CONTRACT_IMPLIES: dict[str, tuple[str, ...]] = {
    "delivered": ("processing",), "opened": ("delivered",), "clicked": ("opened", "delivered"),
    "answered": ("delivered",), "complained": ("delivered",), "unsubscribed": ("delivered",),
    "bounced": ("failed",),
}
ENGAGEMENT = ("opened", "clicked")
HTTP_STATUS_ACTIONS = ("http_request", "sync")
T0 = 1_700_000_000_000
NOW = 1_700_100_000_000


def contract_closure(status: str, action: str) -> set[str]:
    """`status` and all it implies (§2.2, transitively), within the action's set."""
    out, todo = set(), [status]
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(CONTRACT_IMPLIES.get(s, ()))
    return out & CONTRACT_ACTIONS[action]


def contract_current(reached: set[str]) -> str:
    """§2.3, as written."""
    if reached & {"failed", "bounced"} and not reached & {"opened", "clicked", "answered"}:
        return "bounced" if "bounced" in reached else "failed"
    ranked = [("sent",), ("processing",), ("delivered",), ("opened", "answered"), ("clicked",),
              ("succeeded",)]
    for tier in reversed(ranked):
        for s in tier:
            if s in reached:
                return s
    return ""


def effective_status(cb: Callback, action: str) -> str | None:
    """The status a callback reports for this action (§2.8), or None when it is not allowed."""
    if cb.status is not None:
        status = cb.status
    elif action in HTTP_STATUS_ACTIONS:
        status = "succeeded" if cb.http_status == 200 else "failed"
    else:
        return None
    return status if status in CONTRACT_ACTIONS[action] else None


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

MESSAGE_ID = "msg-prop"
EVENT_IDS = [f"ev-{i}" for i in range(10)]


@dataclass
class History:
    action: str
    request: SendRequest
    callbacks: list[Callback]  # in generated order, with deliberate repeats of the same event

    @property
    def records(self) -> list[SendRequest | Callback]:
        return [self.request, *self.callbacks]


@st.composite
def callback_contents(draw, event_id: str, action: str) -> Callback:
    allowed = sorted(CONTRACT_ACTIONS[action])
    forbidden = sorted(set(CONTRACT_STATUSES) - CONTRACT_ACTIONS[action])
    choices = [st.sampled_from(allowed)] * 4 + [st.sampled_from(forbidden)]
    status = draw(st.one_of(*choices))
    http_status = None
    if action in HTTP_STATUS_ACTIONS and draw(st.booleans()):
        status, http_status = None, draw(st.sampled_from([200, 201, 404, 500, 503]))
    extra = {}
    if status == "clicked":
        extra["url"] = draw(st.sampled_from(["https://a.example", "https://b.example"]))
    if status in ENGAGEMENT:
        extra["is_machine"] = draw(st.booleans())
    if status in ("failed", "bounced") or (http_status is not None and http_status != 200):
        extra["reason_code"] = draw(st.sampled_from(["550", "421", "timeout"]))
    if status == "bounced":
        extra["bounce_type"] = draw(st.sampled_from(["hard", "soft"]))
    return Callback(event_id=event_id, occurred_at=T0 + draw(st.integers(0, 10_000_000)),
                    status=status, http_status=http_status, message_id=MESSAGE_ID, **extra)


@st.composite
def histories(draw) -> History:
    action = draw(st.sampled_from(sorted(CONTRACT_ACTIONS)))
    workspace = draw(st.sampled_from([None, "", "shop-a", "shop-b"]))
    request = SendRequest(message_id=MESSAGE_ID, action=action, customer_id="cust-1", requested_at=T0,
                          flow_id="flow-1", campaign_id="camp-1", step_id="step-1", workspace_id=workspace)
    by_id: dict[str, Callback] = {}
    callbacks = []
    for event_id in draw(st.lists(st.sampled_from(EVENT_IDS), max_size=14)):
        if event_id not in by_id:  # an event id always names the same event
            by_id[event_id] = draw(callback_contents(event_id, action))
        callbacks.append(by_id[event_id])
    return History(action, request, callbacks)


@st.composite
def histories_with_a_redelivery(draw) -> tuple[History, list[SendRequest | Callback]]:
    """A history, and the same records shuffled with each repeated 1 to 5 times."""
    history = draw(histories())
    copies = draw(st.lists(st.integers(1, 5), min_size=len(history.records),
                           max_size=len(history.records)))
    redelivered = [r for r, n in zip(history.records, copies) for _ in range(n)]
    return history, draw(st.permutations(redelivered))


# ---------------------------------------------------------------------------------------------
# Running a history
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    changes: list[StatusChange] = field(default_factory=list)
    dead_lettered: set[str] = field(default_factory=set)  # event ids refused (invalid or rejected)
    reached: set[str] = field(default_factory=set)  # the state's milestones at the end

    @property
    def milestones(self) -> list[str]:
        return [c.status for c in self.changes if c.kind == "milestone"]

    @property
    def current(self) -> str:
        return core.current_status(self.reached)

    @property
    def milestone_change_ids(self) -> set[str]:
        return {c.change_id for c in self.changes if c.kind == "milestone"}

    @property
    def engagement_rows(self) -> list[str]:
        """Event ids of the engagement_events rows these changes make (as sinks/writer.py selects them)."""
        return [c.event_id for c in self.changes
                if c.status in ENGAGEMENT and c.event_id and not c.inferred]


def run(records: list[SendRequest | Callback]) -> Run:
    state, result = core.new_state(), Run()
    for offset, record in enumerate(records):
        if isinstance(record, SendRequest):
            out = core.apply_request(state, record, NOW)
            assert out.invalid is None  # only identical duplicates of the one request
        else:
            out = core.apply_callback(state, record, NOW, origin=("provider-callbacks", 0, offset))
            if out.invalid is not None:
                result.dead_lettered.add(record.event_id)
        result.changes.extend(out.changes)
        result.dead_lettered.update(entry["cb"]["event_id"] for entry, _ in out.rejected)
    result.reached = set(state["ms"])
    assert state["held"] == []  # the request is in every run, so nothing may stay held
    return result


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


# ---------------------------------------------------------------------------------------------
# §2.5: order and duplication do not matter
# ---------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_every_change_carries_the_requests_workspace_in_any_order(case):
    history, redelivered = case
    changes = run(redelivered).changes
    assert {c.workspace_id for c in changes} == {history.request.workspace_id or ""}  # a request makes one


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_shuffling_and_duplicating_yields_the_same_milestones(case):
    history, redelivered = case
    assert set(run(redelivered).milestones) == set(run(history.records).milestones)


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_shuffling_and_duplicating_yields_the_same_current_status(case):
    history, redelivered = case
    assert run(redelivered).current == run(history.records).current


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_shuffling_and_duplicating_yields_the_same_milestone_change_ids(case):
    # Engagement-kind change_ids include the event id of whichever open/click came *second*, so
    # they legitimately depend on order; what must not is the engagement_events rows (next test).
    history, redelivered = case
    assert run(redelivered).milestone_change_ids == run(history.records).milestone_change_ids


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_shuffling_and_duplicating_yields_the_same_engagement_events(case):
    history, redelivered = case
    assert set(run(redelivered).engagement_rows) == set(run(history.records).engagement_rows)


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_shuffling_and_duplicating_dead_letters_the_same_events(case):
    history, redelivered = case
    assert run(redelivered).dead_lettered == run(history.records).dead_lettered


# ---------------------------------------------------------------------------------------------
# The outcome matches the contract computed independently
# ---------------------------------------------------------------------------------------------


def expected_milestones(history: History) -> set[str]:
    reached = {"sent"} & CONTRACT_ACTIONS[history.action]
    for cb in history.callbacks:
        status = effective_status(cb, history.action)
        if status is not None:
            reached |= contract_closure(status, history.action)
    return reached


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_milestones_are_those_the_contract_implies(case):
    history, redelivered = case
    result = run(redelivered)
    assert set(result.milestones) == expected_milestones(history)
    assert result.reached == expected_milestones(history)


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_current_status_is_the_one_section_2_3_gives(case):
    history, redelivered = case
    result = run(redelivered)
    assert result.current == contract_current(expected_milestones(history))
    if result.changes:  # the latest record on the topic shows it too
        assert result.changes[-1].current_status == result.current


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_every_applied_open_and_click_is_one_engagement_row(case):
    history, redelivered = case
    applied = {cb.event_id for cb in history.callbacks
               if effective_status(cb, history.action) in ENGAGEMENT}
    rows = run(redelivered).engagement_rows
    assert Counter(rows) == Counter(applied)


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_refused_events_are_exactly_those_outside_the_actions_set(case):
    history, redelivered = case
    refused = {cb.event_id for cb in history.callbacks if effective_status(cb, history.action) is None}
    assert run(redelivered).dead_lettered == refused


# ---------------------------------------------------------------------------------------------
# Invariants of every run
# ---------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_a_click_implies_delivery_when_the_action_has_it(case):
    history, redelivered = case
    reached = set(run(redelivered).milestones)
    if "clicked" in reached and "delivered" in CONTRACT_ACTIONS[history.action]:
        assert "delivered" in reached


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_every_reached_milestone_has_its_implied_ones(case):
    history, redelivered = case
    reached = set(run(redelivered).milestones)
    for status in reached:
        assert contract_closure(status, history.action) <= reached, status


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_every_change_is_a_status_of_the_actions_set(case):
    history, redelivered = case
    for change in run(redelivered).changes:
        if change.kind == "request":  # an http_request awaiting its result: no status yet
            assert change.status == "" and history.action == "http_request", change
            continue
        assert change.status in CONTRACT_ACTIONS[history.action], change


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_each_milestone_is_emitted_once_per_message(case):
    _, redelivered = case
    result = run(redelivered)
    repeated = [s for s, n in Counter(result.milestones).items() if n > 1]
    # Only a failure milestone is produced again, and only when an earlier failure arrived late:
    # each repeat carries a strictly earlier reason_at, so the latest record holds the earliest reason.
    assert set(repeated) <= {"failed", "bounced"}
    for status in repeated:
        reasons = [(c.reason_at, c.reason_code, c.reason, c.bounce_type)
                   for c in result.changes if c.kind == "milestone" and c.status == status]
        assert reasons == sorted(set(reasons), reverse=True), (status, reasons)
    assert len(result.milestone_change_ids) == len(set(result.milestones))


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_the_failure_reason_is_the_same_in_any_order(case):
    history, redelivered = case

    def final_reasons(result: Run) -> dict[str, tuple]:
        last = {}
        for c in result.changes:
            if c.kind == "milestone" and c.status in ("failed", "bounced"):
                last[c.status] = (c.reason_code, c.reason, c.bounce_type, c.reason_at)
        return last

    assert final_reasons(run(redelivered)) == final_reasons(run(history.records))


@PROPERTY_SETTINGS
@given(histories_with_a_redelivery())
def test_a_milestone_is_reached_at_the_time_of_an_event_that_reaches_it(case):
    history, redelivered = case
    for change in run(redelivered).changes:
        if change.kind != "milestone":
            continue
        if change.status == "sent" and not change.event_id:
            assert change.occurred_at == T0
            continue
        reaching = {cb.occurred_at for cb in history.callbacks
                    if (s := effective_status(cb, history.action)) is not None
                    and change.status in contract_closure(s, history.action)}
        assert change.occurred_at in reaching, change
