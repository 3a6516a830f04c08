"""One entry point from raw bytes to a record or a precise Invalid (CONTRACT §2.7)."""

from __future__ import annotations

import dataclasses
import datetime
import re
import typing
from enum import StrEnum
from typing import Any, Callable, Optional, Union

import orjson

from schemas.models import (ACTIONS, ID_FIELDS, ID_PATTERN, MESSAGE_ID_MAX, STATUSES, TEXT_MAX, Callback,
                            Invalid, SendRequest)


class ErrorType(StrEnum):
    """Every error type a dead letter can carry."""

    UNDECODABLE = "undecodable"  # not UTF-8, or not JSON
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_ACTION = "unknown_action"
    UNKNOWN_STATUS = "unknown_status"
    STATUS_NOT_ALLOWED = "status_not_allowed"
    CONFLICTING_REQUEST = "conflicting_request"
    ORPHAN = "orphan"
    INVALID_WEBHOOK = "invalid_webhook"
    PROVIDER_ERROR = "provider_error"
    UNKNOWN_EVENT = "unknown_event"
    TOO_MANY_HELD = "too_many_held"  # more callbacks wait for one message's request than it can hold
    PROCESSING_ERROR = "processing_error"  # a bug: the record is kept so nothing is lost


_JSON_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", dict: "object"}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a record: its JSON type, whether it is required, and whether it may be null."""

    name: str
    type: type
    required: bool
    nullable: bool = False

    @property
    def json_type(self) -> str:
        return _JSON_TYPE_NAMES[self.type]


def field_specs(model: type) -> tuple[FieldSpec, ...]:
    """The fields of a record dataclass, read from its annotations (the single source of truth)."""
    hints = typing.get_type_hints(model)
    specs = []
    for f in dataclasses.fields(model):
        hint = hints[f.name]
        optional = typing.get_origin(hint) is Union and type(None) in typing.get_args(hint)
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        base = typing.get_origin(hint) or hint
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        specs.append(FieldSpec(f.name, base, required, optional))
    return tuple(specs)


def _decode(raw: bytes, max_bytes: int) -> dict[str, Any] | Invalid:
    if len(raw) > max_bytes:
        return Invalid(ErrorType.TOO_LARGE, f"payload is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(ErrorType.UNDECODABLE, f"not valid UTF-8 JSON: {exc}")
    if not isinstance(doc, dict):
        return Invalid(ErrorType.NOT_AN_OBJECT, f"expected a JSON object, got {type(doc).__name__}")
    return doc


class FieldChecks:
    """The common case of _check_fields in one pass over the fields a record has: every required
    field present, every value of its field's exact JSON type (or null where optional) and within
    its length. A record it does not pass goes through _check_fields, which names the first problem
    in field order (the same error whichever way the record came)."""

    def __init__(self, specs: tuple[FieldSpec, ...]) -> None:
        self.specs = specs
        self.names = frozenset(s.name for s in specs)
        self.required = frozenset(s.name for s in specs if s.required)
        # name -> (type, longest length or None, may be null); orjson gives exact types (no bool
        # for an int field: type() is not isinstance()).
        self._fields = {s.name: (s.type, TEXT_MAX.get(s.name), not s.required) for s in specs}

    def __call__(self, doc: dict[str, Any]) -> Invalid | None:
        if self.required <= doc.keys():
            fields = self._fields
            for name, value in doc.items():
                expected = fields.get(name)
                if expected is None:
                    break
                kind, limit, optional = expected
                if type(value) is not kind:
                    if value is None and optional:
                        continue
                    break
                if limit is not None and len(value) > limit:
                    break
            else:
                return None
        return _check_fields(doc, self.specs, self.names)


def _check_fields(doc: dict[str, Any], specs: tuple[FieldSpec, ...], names: frozenset[str]) -> Invalid | None:
    unknown = doc.keys() - names
    if unknown:
        return Invalid(ErrorType.UNKNOWN_FIELD, f"unknown field(s): {', '.join(sorted(unknown))}")
    for spec in specs:
        value = doc.get(spec.name)
        if value is None:
            if spec.required:
                return Invalid(ErrorType.MISSING_FIELD, f"'{spec.name}' is required")
            continue
        # bool is a subclass of int in Python; JSON true is not an integer.
        if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
            return Invalid(
                ErrorType.WRONG_TYPE,
                f"'{spec.name}' must be {spec.json_type}, got {_json_type_of(value)}",
            )
        limit = TEXT_MAX.get(spec.name)
        if limit is not None and len(value) > limit:
            return Invalid(ErrorType.INVALID_VALUE, f"'{spec.name}' is longer than {limit} characters")
    return None


def _json_type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _clip(value: Any, limit: int = 64) -> str:
    """A value quoted in an error message, cut so a hostile value cannot bloat the dead letter."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


@dataclasses.dataclass(frozen=True, slots=True)
class TimeWindow:
    """Plausible event times: at most `max_age_ms` before the time an input is judged at, and at most
    `max_ahead_ms` after it (SENDTRACK_TIME_MAX_AGE_DAYS, SENDTRACK_TIME_MAX_AHEAD_SECONDS)."""

    max_age_ms: int
    max_ahead_ms: int


DEFAULT_TIME_WINDOW = TimeWindow(max_age_ms=730 * 86_400_000, max_ahead_ms=86_400_000)


def judged_at(record_ms: Optional[int], now_ms: int) -> int:
    """The time an input's event times are judged at: its Kafka record's timestamp, never later
    than `now_ms` (the reader's clock).

    The record's timestamp does not change when the record is read again (after a crash, a
    rebalance, or a backlog read days later), so neither does the verdict; the reader's clock would
    refuse on a late re-read what it accepted the first time. Capping it at the reader's clock means
    a producer's clock ahead of ours (or a forged timestamp; the broker refuses those past
    log.message.timestamp.after.max.ms, 1 h by default) never widens the window ahead. A record
    without a timestamp is judged at `now_ms`."""
    if record_ms is None or record_ms <= 0:
        return now_ms
    return min(record_ms, now_ms)


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_time(doc: dict[str, Any], name: str, now_ms: Optional[int], window: TimeWindow) -> Invalid | None:
    value = doc[name]
    # Milliseconds since the epoch: 2001-09-09 .. 2286-11-20. Seconds are a common producer bug.
    if not 1_000_000_000_000 <= value < 10_000_000_000_000:
        return Invalid(ErrorType.INVALID_VALUE, f"'{name}' must be milliseconds since the epoch, got {value}")
    if now_ms is None:
        return None
    # ClickHouse's toDate wraps past 2149 (2286 lands on a day of 2107): an implausible time would be
    # counted on the wrong day, so it is refused here.
    if value < now_ms - window.max_age_ms:
        return Invalid(ErrorType.INVALID_VALUE, f"'{name}' {value} ({_iso(value)}) is more than "
                       f"{window.max_age_ms / 86_400_000:g} days before {_iso(now_ms)}")
    if value > now_ms + window.max_ahead_ms:
        return Invalid(ErrorType.INVALID_VALUE, f"'{name}' {value} ({_iso(value)}) is more than "
                       f"{window.max_ahead_ms / 1000:g} s after {_iso(now_ms)}")
    return None


def _check_id(doc: dict[str, Any], name: str) -> Invalid | None:
    value = doc.get(name)
    if value is not None and not 0 < len(value) <= MESSAGE_ID_MAX:
        return Invalid(ErrorType.INVALID_VALUE, f"'{name}' must be 1 to {MESSAGE_ID_MAX} characters")
    return None


_ID = re.compile(ID_PATTERN)  # fullmatch: Python's $ also matches before a final newline


_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f]")  # what ID_PATTERN refuses


def _check_id_characters(doc: dict[str, Any], names: tuple[str, ...]) -> Invalid | None:
    # One search over all the ids (they are strings: _check_fields ran); the field by name only
    # when one holds a control character.
    if _CONTROL.search("".join([v for v in map(doc.get, names) if v is not None])) is None:
        return None
    for name in names:
        value = doc.get(name)
        if value is not None and _ID.fullmatch(value) is None:
            return Invalid(ErrorType.INVALID_VALUE, f"'{name}' must not contain control characters "
                           f"(U+0000-U+001F, U+007F-U+009F), got {_clip(value)}")
    return None


MAX_ATTRIBUTE_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, level)
        if deepest > MAX_ATTRIBUTE_DEPTH:
            return deepest
        todo.extend((child, level + 1) for child in node)
    return deepest


_REQUEST_FIELDS = FieldChecks(field_specs(SendRequest))
_REQUEST_IDS = tuple(sorted(_REQUEST_FIELDS.names & ID_FIELDS))
_CALLBACK_FIELDS = FieldChecks(field_specs(Callback))
_CALLBACK_IDS = tuple(sorted(_CALLBACK_FIELDS.names & ID_FIELDS))
_STATUS_SET = frozenset(STATUSES)


def parse_send_request(raw: bytes, max_bytes: int = 1_000_000, *, now_ms: Optional[int] = None,
                       window: TimeWindow = DEFAULT_TIME_WINDOW) -> SendRequest | Invalid:
    """A send request from the bytes of a send-requests record, or why not.

    With `now_ms` (see judged_at), requested_at must lie within `window` of it; without, only the
    epoch-milliseconds range is checked."""
    doc = _decode(raw, max_bytes)
    if isinstance(doc, Invalid):
        return doc
    problem = (
        _REQUEST_FIELDS(doc)
        or _check_id(doc, "message_id")
        or _check_id_characters(doc, _REQUEST_IDS)
        or _check_time(doc, "requested_at", now_ms, window)
    )
    if problem:
        return problem
    if doc["action"] not in ACTIONS:
        return Invalid(
            ErrorType.UNKNOWN_ACTION,
            f"unknown action {_clip(doc['action'])}; expected one of {', '.join(ACTIONS)}",
        )
    if not doc["customer_id"]:
        return Invalid(ErrorType.INVALID_VALUE, "'customer_id' must not be empty")
    if doc.get("attributes") and _depth(doc["attributes"]) > MAX_ATTRIBUTE_DEPTH:
        return Invalid(ErrorType.INVALID_VALUE, f"'attributes' is nested deeper than {MAX_ATTRIBUTE_DEPTH} levels")
    return SendRequest(**doc)


def parse_callback(raw: bytes, max_bytes: int = 1_000_000, *, now_ms: Optional[int] = None,
                   window: TimeWindow = DEFAULT_TIME_WINDOW) -> Callback | Invalid:
    """A canonical callback from the bytes of a provider-callbacks record, or why not (`now_ms` and
    `window` as for parse_send_request, on occurred_at)."""
    doc = _decode(raw, max_bytes)
    if isinstance(doc, Invalid):
        return doc
    return callback_from_dict(doc, now_ms=now_ms, window=window)


def callback_from_dict(doc: dict[str, Any], *, now_ms: Optional[int] = None,
                       window: TimeWindow = DEFAULT_TIME_WINDOW) -> Callback | Invalid:
    """A canonical callback from an already decoded JSON object, or why not."""
    problem = (
        _CALLBACK_FIELDS(doc)
        or _check_id(doc, "message_id")
        or _check_id_characters(doc, _CALLBACK_IDS)
        or _check_time(doc, "occurred_at", now_ms, window)
    )
    if problem:
        return problem
    if not doc["event_id"]:
        return Invalid(ErrorType.INVALID_VALUE, "'event_id' must not be empty")
    status, http_status = doc.get("status"), doc.get("http_status")
    if status is None and http_status is None:
        return Invalid(ErrorType.MISSING_FIELD, "one of 'status' or 'http_status' is required")
    if status is not None and status not in _STATUS_SET:
        return Invalid(
            ErrorType.UNKNOWN_STATUS, f"unknown status {_clip(status)}; expected one of {', '.join(STATUSES)}"
        )
    if http_status is not None and not 100 <= http_status <= 599:
        return Invalid(ErrorType.INVALID_VALUE, f"'http_status' must be 100-599, got {http_status}")
    if doc.get("message_id") is None and not (doc.get("provider") and doc.get("provider_message_id")):
        return Invalid(
            ErrorType.MISSING_FIELD,
            "either 'message_id' or both 'provider' and 'provider_message_id' are required",
        )
    if doc.get("bounce_type") not in (None, "hard", "soft"):
        return Invalid(ErrorType.INVALID_VALUE, f"'bounce_type' must be 'hard' or 'soft', got {_clip(doc['bounce_type'])}")
    return Callback(**doc)


_PARSERS: dict[str, Callable[..., Any]] = {
    "send-requests": parse_send_request,
    "provider-callbacks": parse_callback,
}


def validate(kind: str, raw: bytes, max_bytes: int = 1_000_000, *, now_ms: Optional[int] = None,
             window: TimeWindow = DEFAULT_TIME_WINDOW) -> SendRequest | Callback | Invalid:
    """The validation entry point: `kind` is the unprefixed topic name of the record."""
    return _PARSERS[kind](raw, max_bytes, now_ms=now_ms, window=window)
