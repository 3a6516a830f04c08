"""Hostile input for the validators (CONTRACT §2.7, §3): parse_send_request / parse_callback never raise.

Whatever the bytes, each parser returns either its dataclass, and then the record satisfies the
contract, or an `Invalid` whose error_type is a member of ErrorType. No services are needed.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from schemas.models import ACTIONS, MESSAGE_ID_MAX, STATUSES, Callback, Invalid, SendRequest
from schemas.validate import ErrorType, TimeWindow, parse_callback, parse_send_request

validate_mod = importlib.import_module("schemas.validate")  # the module: schemas.validate is also a function

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
MS_MIN, MS_MAX = 1_000_000_000_000, 10_000_000_000_000
ERROR_TYPES = {e.value for e in ErrorType}
PARSERS = {"request": parse_send_request, "callback": parse_callback}

REQUEST_FIELDS = [f.name for f in dataclasses.fields(SendRequest)]
CALLBACK_FIELDS = [f.name for f in dataclasses.fields(Callback)]
# Identifiers carry no control character (C0, DEL, C1): "\x1f" separates the parts of a provider-id key.
REQUEST_IDS = ["message_id", "customer_id", "provider", "recipient", "flow_id", "campaign_id", "step_id",
               "workspace_id"]
CALLBACK_IDS = ["event_id", "message_id", "provider", "provider_message_id"]
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


# ---------------------------------------------------------------------------------------------
# The contract a parsed record must satisfy
# ---------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_text(v: Any) -> bool:
    """A str that is valid Unicode (encodable as UTF-8: no lone surrogates leaked through)."""
    if not isinstance(v, str):
        return False
    v.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    return True


def _opt_text(v: Any) -> bool:
    return v is None or _is_text(v)


def check_request(r: SendRequest) -> None:
    assert type(r) is SendRequest
    assert _is_text(r.message_id) and 1 <= len(r.message_id) <= MESSAGE_ID_MAX, r.message_id
    assert _is_text(r.action) and r.action in ACTIONS, r.action
    assert _is_text(r.customer_id) and r.customer_id != "", r.customer_id
    assert _is_int(r.requested_at) and MS_MIN <= r.requested_at < MS_MAX, r.requested_at
    for name in ("provider", "recipient", "flow_id", "campaign_id", "step_id", "workspace_id"):
        assert _opt_text(getattr(r, name)), (name, getattr(r, name))
    assert r.attributes is None or isinstance(r.attributes, dict), r.attributes
    for name in REQUEST_IDS:
        assert getattr(r, name) is None or not CONTROL.search(getattr(r, name)), (name, getattr(r, name))


def check_callback(c: Callback) -> None:
    assert type(c) is Callback
    assert _is_text(c.event_id) and c.event_id != "", c.event_id
    assert _is_int(c.occurred_at) and MS_MIN <= c.occurred_at < MS_MAX, c.occurred_at
    assert c.status is not None or c.http_status is not None
    assert c.status is None or (_is_text(c.status) and c.status in STATUSES), c.status
    assert c.http_status is None or (_is_int(c.http_status) and 100 <= c.http_status <= 599), c.http_status
    if c.message_id is not None:
        assert _is_text(c.message_id) and 1 <= len(c.message_id) <= MESSAGE_ID_MAX, c.message_id
    else:
        assert _is_text(c.provider) and c.provider and _is_text(c.provider_message_id) and c.provider_message_id
    for name in ("provider", "provider_message_id", "reason_code", "reason", "url"):
        assert _opt_text(getattr(c, name)), (name, getattr(c, name))
    assert c.is_machine is None or isinstance(c.is_machine, bool), c.is_machine
    assert c.bounce_type in (None, "hard", "soft"), c.bounce_type
    for name in CALLBACK_IDS:
        assert getattr(c, name) is None or not CONTROL.search(getattr(c, name)), (name, getattr(c, name))


def check_outcome(result: Any, kind: str) -> None:
    """The one property of every test here."""
    if isinstance(result, Invalid):
        assert result.error_type in ERROR_TYPES, result.error_type
        assert ErrorType(result.error_type) in ErrorType
        assert isinstance(result.error, str) and result.error, result
        return
    if kind == "request":
        check_request(result)
    else:
        check_callback(result)


def run_both(raw: bytes, max_bytes: int = 1_000_000) -> dict[str, Any]:
    out = {}
    for kind, parse in PARSERS.items():
        result = parse(raw, max_bytes)  # must not raise: any exception fails the test as-is
        check_outcome(result, kind)
        out[kind] = result
    return out


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

# Leaves of a JSON document, with the edges: big and signed integers past 64 bits, floats near the
# ms range, text from every plane, and strings spelling numbers and non-numbers.
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, MS_MIN - 1, MS_MIN, MS_MAX - 1, MS_MAX, 2**63 - 1, 2**63, 2**64 - 1,
                     99, 100, 599, 600, 200]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.78e12, 1_780_000_000_000.0, 1e308, -0.0, 5e-324]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "0x10", "", " ", "\x00", "\u202e",
                     "sent", "email", "hard", "true", "null", "1780000000000"]),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


def _nested_bytes(depth: int, leaf: bytes, kinds: list[bool]) -> bytes:
    """`depth` levels of arrays and objects around `leaf`, built as bytes (orjson.dumps stops at 255)."""
    head, tail = [], []
    for i in range(depth):
        if kinds[i % len(kinds)]:
            head.append(b"[")
            tail.append(b"]")
        else:
            head.append(b'{"k":')
            tail.append(b"}")
    return b"".join(head) + leaf + b"".join(reversed(tail))


deep_json = st.builds(
    _nested_bytes,
    st.integers(min_value=1, max_value=1100),  # orjson's depth limit is 1024: both sides of it
    st.sampled_from([b"1", b"null", b'"x"', b"{}", b"[]", b'{"message_id":"m"}']),
    st.lists(st.booleans(), min_size=1, max_size=4),
)


@st.composite
def huge_strings(draw) -> str:
    chunk = draw(st.text(min_size=1, max_size=4))
    return chunk * draw(st.integers(min_value=1_000, max_value=60_000))


# Raw JSON text that no Python value serialises to: non-numbers, overflowing numbers, lone
# surrogates as escapes, a NUL, bad escapes, trailing garbage, a BOM, truncated documents.
RAW_TOKENS = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1E-400", b"-0", b"01",
              b"1.", b".5", b"+1", b"0x1F", b"1_000", b'"\\ud800"', b'"\\udfff"', b'"\\ud83d\\u0041"',
              b'"\\ud83d"', b'"\\udc00\\ud800"', b'"\\u0000"', b'"\\x41"', b'"\\u12"', b'"a\x00b"',
              b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"\xff"', b"\xef\xbb\xbf{}", b"{} {}", b"{,}", b"[1,]",
              b'{"a":1,}', b"true", b"nul", b"", b" ", b"{", b'{"a"', b"18446744073709551616",
              b"-9223372036854775809", b"1" * 400]


def _dumps(value: Any, ascii: bool = False) -> bytes:
    """JSON bytes (the stdlib writes integers past 64 bits, which orjson.dumps refuses)."""
    return json.dumps(value, ensure_ascii=ascii, allow_nan=False, separators=(",", ":")).encode()


def valid_request_doc(**kw: Any) -> dict[str, Any]:
    doc = {"message_id": "m-1", "action": "email", "customer_id": "cus-1", "requested_at": 1_780_000_000_000,
           "provider": "sendgrid", "recipient": "an@example.vn", "flow_id": "f", "campaign_id": "c",
           "step_id": "s", "attributes": {"template": "summer"}}
    doc.update(kw)
    return doc


def valid_callback_doc(**kw: Any) -> dict[str, Any]:
    doc = {"event_id": "e-1", "occurred_at": 1_780_000_001_000, "status": "delivered", "message_id": "m-1",
           "provider": "sendgrid", "provider_message_id": "sg-1", "reason_code": "550", "reason": "r",
           "url": "https://x.example", "is_machine": False, "bounce_type": "hard"}
    doc.update(kw)
    return doc


# Text of every plane except control characters (and lone surrogates), as ids are.
ids = st.characters(blacklist_categories=("Cc", "Cs"))


@st.composite
def base_requests(draw) -> dict[str, Any]:
    doc = valid_request_doc(
        message_id=draw(st.text(ids, min_size=1, max_size=MESSAGE_ID_MAX)),
        action=draw(st.sampled_from(sorted(ACTIONS))),
        customer_id=draw(st.text(ids, min_size=1, max_size=20)),
        requested_at=draw(st.integers(min_value=MS_MIN, max_value=MS_MAX - 1)),
    )
    for name in draw(st.sets(st.sampled_from(["provider", "recipient", "flow_id", "campaign_id", "step_id",
                                              "attributes"]))):
        del doc[name]
    return doc


@st.composite
def base_callbacks(draw) -> dict[str, Any]:
    doc = valid_callback_doc(
        event_id=draw(st.text(ids, min_size=1, max_size=30)),
        occurred_at=draw(st.integers(min_value=MS_MIN, max_value=MS_MAX - 1)),
        status=draw(st.sampled_from(STATUSES)),
        message_id=draw(st.text(ids, min_size=1, max_size=MESSAGE_ID_MAX)),
    )
    if draw(st.booleans()):
        doc["http_status"] = draw(st.integers(min_value=100, max_value=599))
        if draw(st.booleans()):
            del doc["status"]
    for name in draw(st.sets(st.sampled_from(["provider", "provider_message_id", "reason_code", "reason", "url",
                                              "is_machine", "bounce_type"]))):
        del doc[name]
    if draw(st.booleans()) and doc.get("provider") and doc.get("provider_message_id"):
        del doc["message_id"]
    return doc


mutation_values = st.one_of(json_values, huge_strings(), st.sampled_from(["", " ", "x" * (MESSAGE_ID_MAX + 1)]))


@st.composite
def almost_valid(draw, base, fields: list[str]) -> dict[str, Any]:
    """A valid record with one field replaced by a random JSON value, removed, or one extra key."""
    doc = dict(draw(base))
    how = draw(st.sampled_from(["replace", "remove", "extra", "null"]))
    if how == "replace":
        doc[draw(st.sampled_from(fields))] = draw(mutation_values)
    elif how == "remove":
        doc.pop(draw(st.sampled_from(fields)), None)
    elif how == "null":
        doc[draw(st.sampled_from(fields))] = None
    else:
        key = draw(st.text(max_size=12) | st.sampled_from(["Message_ID", "message_id ", "__proto__", "status\x00"]))
        assume(key not in fields)
        doc[key] = draw(json_values)
    return doc


# ---------------------------------------------------------------------------------------------
# Sanity: the valid bases really are valid (otherwise the mutation tests prove little)
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(base_requests())
def test_valid_requests_parse(doc):
    result = parse_send_request(_dumps(doc))
    assert isinstance(result, SendRequest), result
    check_request(result)


@FUZZ
@given(base_callbacks())
def test_valid_callbacks_parse(doc):
    result = parse_callback(_dumps(doc))
    assert isinstance(result, Callback), result
    check_callback(result)


# ---------------------------------------------------------------------------------------------
# Arbitrary input
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\x00")
@example(b"\xff\xfe{\x00}\x00")
@example(b"\xef\xbb\xbf{}")
def test_arbitrary_bytes(raw):
    results = run_both(raw)
    for result in results.values():
        # Random bytes almost never form a complete record; when they do, check_outcome covered it.
        if isinstance(result, Invalid):
            assert result.error_type in ERROR_TYPES


@FUZZ
@given(json_values, st.booleans())
def test_arbitrary_json_values(value, ascii):
    results = run_both(_dumps(value, ascii))
    if not isinstance(value, dict):
        assert all(r.error_type == ErrorType.NOT_AN_OBJECT for r in results.values()), results


@FUZZ
@given(deep_json)
def test_deeply_nested_json(raw):
    results = run_both(raw)
    # Every top level here is an array or an object without the required fields: never a record.
    assert all(isinstance(r, Invalid) for r in results.values()), results


@FUZZ
@given(st.lists(st.sampled_from(RAW_TOKENS) | json_values.map(_dumps), min_size=1, max_size=4),
       st.sampled_from([b"", b",", b" ", b":"]))
def test_raw_json_text_tokens(tokens, sep):
    run_both(sep.join(tokens))


@FUZZ
@given(base_requests() | base_callbacks(),
       st.sampled_from(["message_id", "event_id", "action", "customer_id", "status", "provider", "reason",
                        "bounce_type", "attributes"]),
       st.sampled_from(RAW_TOKENS))
def test_raw_tokens_in_place_of_a_field(doc, field, token):
    """NaN-like text, overflowing numbers and lone surrogates (as JSON escapes) where a value goes."""
    doc = dict(doc)
    doc[field] = "\x00PLACEHOLDER\x00"
    raw = _dumps(doc).replace(b'"\\u0000PLACEHOLDER\\u0000"', token)
    run_both(raw)


@FUZZ
@given(base_requests() | base_callbacks(),
       st.sampled_from(["message_id", "event_id", "customer_id", "provider", "reason", "url"]),
       st.sampled_from([b"\\ud800", b"\\udbff", b"\\udc00", b"\\udfff", b"\\ud800\\ud800", b"\\udc00\\ud800",
                        b"\\ud83d\\ude00", b"\\u0000", b"\\u202e"]),
       st.text(max_size=5))
def test_escaped_lone_surrogates_in_strings(doc, field, escape, around):
    """A lone surrogate escaped inside a string field is refused or yields valid text, never raises."""
    doc = dict(doc)
    doc[field] = around + "\x00SURR\x00" + around
    raw = _dumps(doc).replace(b"\\u0000SURR\\u0000", escape)
    results = run_both(raw)
    for result in results.values():
        if not isinstance(result, Invalid):
            for name in result.__slots__:
                value = getattr(result, name)
                if isinstance(value, str):
                    value.encode("utf-8")  # no lone surrogate leaks into a record


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(huge_strings(), st.sampled_from(["message_id", "event_id", "customer_id", "action", "status",
                                        "reason", "attributes_key", "extra_key"]))
def test_huge_strings(text, field):
    for doc in (valid_request_doc(), valid_callback_doc()):
        if field == "attributes_key":
            doc["attributes"] = {text: text}
        elif field == "extra_key":
            doc[text] = 1
        else:
            doc[field] = text
        run_both(_dumps(doc))


# ---------------------------------------------------------------------------------------------
# Almost valid records
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(almost_valid(base_requests(), REQUEST_FIELDS))
def test_almost_valid_requests(doc):
    result = parse_send_request(_dumps(doc))
    check_outcome(result, "request")
    extra = doc.keys() - set(REQUEST_FIELDS)
    if extra:
        assert isinstance(result, Invalid) and result.error_type == ErrorType.UNKNOWN_FIELD, result
    for name in ("message_id", "action", "customer_id", "requested_at"):
        if doc.get(name) is None:
            assert isinstance(result, Invalid), result
    if isinstance(result, SendRequest):
        # A record that passes keeps exactly what was sent.
        assert {k: v for k, v in dataclasses.asdict(result).items() if v is not None} == \
            {k: v for k, v in doc.items() if v is not None}


@FUZZ
@given(almost_valid(base_callbacks(), CALLBACK_FIELDS))
def test_almost_valid_callbacks(doc):
    result = parse_callback(_dumps(doc))
    check_outcome(result, "callback")
    extra = doc.keys() - set(CALLBACK_FIELDS)
    if extra:
        assert isinstance(result, Invalid) and result.error_type == ErrorType.UNKNOWN_FIELD, result
    for name in ("event_id", "occurred_at"):
        if doc.get(name) is None:
            assert isinstance(result, Invalid), result
    if isinstance(result, Callback):
        assert {k: v for k, v in dataclasses.asdict(result).items() if v is not None} == \
            {k: v for k, v in doc.items() if v is not None}


@FUZZ
@given(almost_valid(base_requests(), REQUEST_FIELDS) | almost_valid(base_callbacks(), CALLBACK_FIELDS))
def test_almost_valid_records_through_the_other_parser(doc):
    """A callback sent to send-requests (and the reverse) is refused or valid there, never a crash."""
    run_both(_dumps(doc))


@pytest.mark.parametrize("value", [True, False, 1_780_000_000_000.0, 1.78e12, "1780000000000", [1_780_000_000_000],
                                   {"ms": 1}, 1_780_000_000, -1_780_000_000_000, 0, 2**64, 2**100, MS_MAX])
def test_times_must_be_integer_milliseconds(value):
    assert isinstance(parse_send_request(_dumps(valid_request_doc(requested_at=value))), Invalid)
    assert isinstance(parse_callback(_dumps(valid_callback_doc(occurred_at=value))), Invalid)


@pytest.mark.parametrize("value", [True, 200.0, "200", 99, 600, -200, 0, 2**63])
def test_http_status_must_be_an_integer_in_range(value):
    doc = valid_callback_doc(http_status=value)
    del doc["status"]
    result = parse_callback(_dumps(doc))
    assert isinstance(result, Invalid), result


# ---------------------------------------------------------------------------------------------
# Size and depth limits
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(st.integers(min_value=1, max_value=4096), st.integers(min_value=1, max_value=512),
       st.sampled_from(["valid-request", "valid-callback", "bytes", "array"]))
def test_payload_over_max_bytes_is_too_large(max_bytes, over, shape):
    size = max_bytes + over
    if shape == "valid-request":
        doc = valid_request_doc(attributes={"pad": ""})
        raw = _dumps(doc)
        doc["attributes"]["pad"] = "x" * max(0, size - len(raw))
        raw = _dumps(doc)
    elif shape == "valid-callback":
        doc = valid_callback_doc(reason="")
        raw = _dumps(doc)
        doc["reason"] = "x" * max(0, size - len(raw))
        raw = _dumps(doc)
    elif shape == "bytes":
        raw = b"\xff" * size
    else:
        raw = b"[" + b"0," * size + b"0]"
    assert len(raw) > max_bytes
    for result in run_both(raw, max_bytes).values():
        assert isinstance(result, Invalid) and result.error_type == ErrorType.TOO_LARGE, result


def test_payload_at_exactly_max_bytes_is_not_too_large():
    raw = _dumps(valid_request_doc())
    assert isinstance(parse_send_request(raw, len(raw)), SendRequest)
    assert parse_send_request(raw, len(raw) - 1).error_type == ErrorType.TOO_LARGE
    raw = _dumps(valid_callback_doc())
    assert isinstance(parse_callback(raw, len(raw)), Callback)
    assert parse_callback(raw, len(raw) - 1).error_type == ErrorType.TOO_LARGE


def test_default_limit_is_one_megabyte():
    doc = valid_request_doc(attributes={"pad": "x" * 1_000_000})
    assert parse_send_request(_dumps(doc)).error_type == ErrorType.TOO_LARGE
    doc = valid_callback_doc(reason="x" * 1_000_000)
    assert parse_callback(_dumps(doc)).error_type == ErrorType.TOO_LARGE


DEPTH = 100_000


def _with_raw_attributes(attributes: bytes) -> bytes:
    """A valid request whose `attributes` value is the given JSON text."""
    raw = _dumps(valid_request_doc(attributes="\x00ATTR\x00"))
    assert raw.count(b'"\\u0000ATTR\\u0000"') == 1
    return raw.replace(b'"\\u0000ATTR\\u0000"', attributes)


@pytest.mark.parametrize("shape", ["arrays", "objects", "mixed", "in-attributes", "unclosed"])
def test_json_nested_100000_levels_is_invalid_not_a_recursion_error(shape):
    if shape == "arrays":
        raw = b"[" * DEPTH + b"]" * DEPTH
    elif shape == "objects":
        raw = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
    elif shape == "mixed":
        raw = _nested_bytes(DEPTH, b"null", [True, False])
    elif shape == "in-attributes":
        raw = _with_raw_attributes(b'{"a":' * DEPTH + b"1" + b"}" * DEPTH)
    else:
        raw = b"[" * DEPTH
    assert len(raw) <= 1_000_000
    for kind, parse in PARSERS.items():
        result = parse(raw)
        assert isinstance(result, Invalid), (kind, result)
        assert result.error_type in ERROR_TYPES, result


@pytest.mark.parametrize("depth", [100, 252, 253, 254, 300, 1000])
def test_deep_attributes_that_pass_can_be_stored(depth):
    """A request the parser accepts is kept in the engine's state and routed between partitions as
    orjson (agents/engine.py: messages_table[...] = state, route(...)), whose writer stops at 255
    levels; so it must serialise there again, or be refused by the parser."""
    raw = _with_raw_attributes(b'{"a":' * depth + b"1" + b"}" * depth)
    result = parse_send_request(raw)
    check_outcome(result, "request")
    if isinstance(result, SendRequest):
        doc = {name: v for name in result.__slots__ if (v := getattr(result, name)) is not None}
        orjson.dumps({"req": doc, "ms": {}, "ev": [], "held": []})  # the state (sendtrack.status.new_state)
        orjson.dumps({"kind": "request", "origin": ["send-requests", 0, 0], "body": doc})  # engine.route


# ---------------------------------------------------------------------------------------------
# Control characters in ids, and the time window
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(base_requests() | base_callbacks(), st.data())
def test_a_control_character_in_an_id_is_an_invalid_value(doc, data):
    doc = dict(doc)
    is_request = "action" in doc
    name = data.draw(st.sampled_from(REQUEST_IDS if is_request else CALLBACK_IDS))
    control = data.draw(st.sampled_from([chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]))
    head, tail = data.draw(st.text(ids, max_size=5)), data.draw(st.text(ids, max_size=5))
    doc[name] = head + control + tail
    result = (parse_send_request if is_request else parse_callback)(_dumps(doc))
    assert isinstance(result, Invalid), result
    assert result.error_type in (ErrorType.INVALID_VALUE, ErrorType.MISSING_FIELD), result


@FUZZ
@given(base_callbacks(), st.sampled_from(["reason", "reason_code", "url"]), st.text(max_size=40))
def test_control_characters_in_other_text_are_kept(doc, name, text):
    doc = dict(doc, **{name: text})
    result = parse_callback(_dumps(doc))
    assert isinstance(result, Callback), result
    assert getattr(result, name) == text


DAY = 86_400_000
windows = st.builds(TimeWindow, max_age_ms=st.integers(0, 1000 * DAY), max_ahead_ms=st.integers(0, 10 * DAY))


@FUZZ
@given(base_requests() | base_callbacks(), st.integers(MS_MIN, MS_MAX - 1), windows,
       st.one_of(st.integers(-20 * DAY, 20 * DAY), st.integers(-2000 * DAY, 2000 * DAY), st.sampled_from([0, -1, 1])),
       st.booleans())
def test_a_time_is_accepted_exactly_within_the_window(doc, now, window, offset, at_edge):
    doc = dict(doc)
    is_request = "action" in doc
    name = "requested_at" if is_request else "occurred_at"
    if at_edge:  # just inside or outside one of the edges
        offset = (window.max_ahead_ms if offset >= 0 else -window.max_age_ms) + (offset % 3 - 1)
    doc[name] = now + offset
    result = (parse_send_request if is_request else parse_callback)(_dumps(doc), now_ms=now, window=window)
    check_outcome(result, "request" if is_request else "callback")
    inside = -window.max_age_ms <= offset <= window.max_ahead_ms and MS_MIN <= now + offset < MS_MAX
    if inside:
        assert not isinstance(result, Invalid), result
    else:
        assert isinstance(result, Invalid) and result.error_type == ErrorType.INVALID_VALUE, result
        assert name in result.error


# ---------------------------------------------------------------------------------------------
# The one-pass field check (issue 19) and the full one agree
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(almost_valid(base_requests(), REQUEST_FIELDS) | almost_valid(base_callbacks(), CALLBACK_FIELDS)
       | base_requests() | base_callbacks())
def test_the_one_pass_field_check_gives_the_full_checks_verdict(doc):
    """FieldChecks passes a record only when _check_fields would, and otherwise returns exactly its
    error (the first problem in field order), for requests and callbacks alike."""
    doc = orjson.loads(_dumps(doc))  # as the parser sees it: orjson's exact types
    for checks in (validate_mod._REQUEST_FIELDS, validate_mod._CALLBACK_FIELDS):
        assert checks(doc) == validate_mod._check_fields(doc, checks.specs, checks.names)


@pytest.mark.parametrize("change", [
    {"requested_at": True}, {"requested_at": 1.78e12}, {"message_id": None}, {"action": None},
    {"provider": None}, {"attributes": []}, {"attributes": None}, {"flow_id": 7},
    {"recipient": "x" * 513}, {"recipient": "x" * 512}, {"extra": 1}, {"workspace_id": ""},
])
def test_the_one_pass_field_check_on_each_kind_of_problem(change):
    doc = dict(valid_request_doc(), **change)
    checks = validate_mod._REQUEST_FIELDS
    full = validate_mod._check_fields(doc, checks.specs, checks.names)
    assert checks(doc) == full
    assert (full is None) == (change in ({"provider": None}, {"attributes": None}, {"recipient": "x" * 512},
                                         {"workspace_id": ""}))
