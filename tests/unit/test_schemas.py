"""The records of CONTRACT §3: the dataclasses, the parser and the JSON Schema documents agree.

`jsonschema` is not installed, so a minimal checker for the keywords the documents use lives at the
top of this file; it refuses any keyword it does not implement, so it can never pass by ignoring one.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any, Union

import orjson
import pytest

import schemas
from schemas.models import (ID_FIELDS, ID_PATTERN, MESSAGE_ID_MAX, TEXT_MAX, Callback, DeadLetter, SendRequest,
                            StatusChange)
from schemas.validate import (DEFAULT_TIME_WINDOW, TimeWindow, field_specs, judged_at, parse_callback,
                              parse_send_request, validate)
from sendtrack import status as core

SCHEMA_DIR = Path(schemas.__file__).parent
T0 = 1_700_000_000_000

MODELS = {
    "send-requests": SendRequest,
    "provider-callbacks": Callback,
    "status-changes": StatusChange,
    "dead-letters": DeadLetter,
}


def load_schema(topic: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{topic}.schema.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# A minimal JSON Schema (2020-12) checker
# ---------------------------------------------------------------------------------------------

ANNOTATIONS = {"$schema", "$id", "title", "description"}
ASSERTIONS = {"type", "enum", "required", "properties", "additionalProperties", "minLength",
              "maxLength", "pattern", "minimum", "maximum", "anyOf", "allOf"}


def json_type_matches(value: Any, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    raise AssertionError(f"unknown JSON type {name!r}")


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, and 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b and (a is None) == (b is None)


def schema_errors(schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
    """Every way `value` breaks `schema`; [] when it is valid."""
    unsupported = set(schema) - ANNOTATIONS - ASSERTIONS
    assert not unsupported, f"the test's checker does not implement {sorted(unsupported)} at {path}"
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(json_type_matches(value, t) for t in types):
            errors.append(f"{path}: {value!r} is not of type {types}")
    if "enum" in schema and not any(json_equal(value, e) for e in schema["enum"]):
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        # ECMA-262's $ matches only at the very end; Python's also before a final newline.
        if "pattern" in schema and not re.search(schema["pattern"].replace("$", r"\Z"), value):
            errors.append(f"{path}: does not match {schema['pattern']!r}")
    if json_type_matches(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: '{name}' is required")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                errors.extend(schema_errors(properties[name], item, f"{path}.{name}"))
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: additional property '{name}'")
            else:
                assert schema.get("additionalProperties", True) is True, "only true/false supported"
    for sub in schema.get("allOf", []):
        errors.extend(schema_errors(sub, value, path))
    if "anyOf" in schema and all(schema_errors(sub, value, path) for sub in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf {schema['anyOf']}")
    return errors


def test_the_checker_implements_every_keyword_the_documents_use():
    for topic in MODELS:  # schema_errors asserts on any keyword it does not know
        schema = load_schema(topic)
        assert schema_errors(schema, {}) != []


def test_the_checker_rejects_what_it_should():
    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": ["integer", "null"], "minimum": 1},
                             "b": {"type": "string", "enum": ["x", "x\n"], "maxLength": 2, "pattern": "^x$"}},
              "anyOf": [{"required": ["a"]}]}
    assert schema_errors(schema, {"a": 1, "b": "x"}) == []
    assert schema_errors(schema, {"a": 1, "b": "x\n"}) != []
    assert schema_errors(schema, {"a": None}) == []
    assert schema_errors(schema, []) != []
    assert schema_errors(schema, {"b": "x"}) != []
    assert schema_errors(schema, {"a": 0}) != []
    assert schema_errors(schema, {"a": True}) != []
    assert schema_errors(schema, {"a": 1, "b": "y"}) != []
    assert schema_errors(schema, {"a": 1, "c": 1}) != []


# ---------------------------------------------------------------------------------------------
# Helper constructors
# ---------------------------------------------------------------------------------------------


def request_doc(drop: tuple[str, ...] = (), **fields) -> dict[str, Any]:
    doc = {"message_id": "msg-1", "action": "email", "customer_id": "cust-1", "requested_at": T0}
    doc.update(fields)
    return {k: v for k, v in doc.items() if k not in drop}


def callback_doc(drop: tuple[str, ...] = (), **fields) -> dict[str, Any]:
    doc = {"event_id": "ev-1", "occurred_at": T0 + 1_000, "status": "delivered", "message_id": "msg-1"}
    doc.update(fields)
    return {k: v for k, v in doc.items() if k not in drop}


def raw(doc: Any) -> bytes:
    return orjson.dumps(doc)


def nullable(model: type, name: str) -> bool:
    hint = typing.get_type_hints(model)[name]
    return typing.get_origin(hint) is Union and type(None) in typing.get_args(hint)


# ---------------------------------------------------------------------------------------------
# Models and schema documents describe the same records
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", MODELS)
def test_model_and_schema_have_the_same_fields(topic):
    schema = load_schema(topic)
    assert set(schema["properties"]) == {s.name for s in field_specs(MODELS[topic])}
    assert schema["additionalProperties"] is False
    assert schema["type"] == "object"


@pytest.mark.parametrize("topic", ["send-requests", "provider-callbacks"])
def test_the_schemas_limit_text_as_the_parser_does(topic):
    """maxLength is TEXT_MAX (MESSAGE_ID_MAX for message_id), the id pattern is on exactly the ids."""
    model, properties = MODELS[topic], load_schema(topic)["properties"]
    for spec in field_specs(model):
        if spec.type is not str or spec.name in ("action", "status", "bounce_type"):  # enums
            continue
        limit = MESSAGE_ID_MAX if spec.name == "message_id" else TEXT_MAX[spec.name]
        assert properties[spec.name].get("maxLength") == limit, spec.name
        assert properties[spec.name].get("pattern") == (ID_PATTERN if spec.name in ID_FIELDS else None), spec.name


@pytest.mark.parametrize("topic", MODELS)
def test_model_and_schema_have_the_same_required_fields(topic):
    schema = load_schema(topic)
    assert set(schema["required"]) == {s.name for s in field_specs(MODELS[topic]) if s.required}


@pytest.mark.parametrize("topic", MODELS)
def test_model_and_schema_have_the_same_json_types(topic):
    """Optional[T] fields are [T, "null"] in the schema; the others are plain T."""
    model, schema = MODELS[topic], load_schema(topic)
    for spec in field_specs(model):
        expected = [spec.json_type, "null"] if nullable(model, spec.name) else spec.json_type
        assert schema["properties"][spec.name]["type"] == expected, spec.name


def test_the_contracts_required_request_fields_are_required():
    assert set(load_schema("send-requests")["required"]) == {
        "message_id", "action", "customer_id", "requested_at"}


def test_the_schemas_list_the_contracts_actions_and_statuses():
    actions = ["email", "zalo_oa", "zns", "messenger", "sms", "ai_call", "http_request", "timer",
               "voucher", "sync", "start_flow", "other"]
    statuses = ["sent", "processing", "delivered", "failed", "opened", "clicked", "unsubscribed",
                "complained", "bounced", "answered", "succeeded"]
    assert sorted(load_schema("send-requests")["properties"]["action"]["enum"]) == sorted(actions)
    assert sorted(load_schema("status-changes")["properties"]["action"]["enum"]) == sorted(actions)
    assert sorted(s for s in load_schema("provider-callbacks")["properties"]["status"]["enum"]
                  if s is not None) == sorted(statuses)
    # '' is the status of the record announcing an http_request awaiting its result (kind 'request').
    assert sorted(load_schema("status-changes")["properties"]["status"]["enum"]) == sorted(statuses + [""])


# ---------------------------------------------------------------------------------------------
# Validation errors (CONTRACT §2.7)
# ---------------------------------------------------------------------------------------------

INVALID_RECORDS = [
    # (case, topic, bytes, error_type)
    ("malformed JSON", "send-requests", b'{"message_id": "msg-1",', "undecodable"),
    ("not UTF-8", "send-requests", b'{"message_id": "\xff\xfe"}', "undecodable"),
    ("not UTF-8 callback", "provider-callbacks", b"\xc3\x28", "undecodable"),
    ("a JSON array", "send-requests", raw([request_doc()]), "not_an_object"),
    ("a JSON string", "provider-callbacks", raw("delivered"), "not_an_object"),
    ("missing message_id", "send-requests", raw(request_doc(drop=("message_id",))), "missing_field"),
    ("missing customer_id", "send-requests", raw(request_doc(drop=("customer_id",))), "missing_field"),
    ("requested_at as a string", "send-requests", raw(request_doc(requested_at=str(T0))), "wrong_type"),
    ("requested_at as true", "send-requests", raw(request_doc(requested_at=True)), "wrong_type"),
    ("message_id as a number", "send-requests", raw(request_doc(message_id=12)), "wrong_type"),
    ("attributes as a list", "send-requests", raw(request_doc(attributes=["a"])), "wrong_type"),
    ("unknown action", "send-requests", raw(request_doc(action="fax")), "unknown_action"),
    ("unknown field", "send-requests", raw(request_doc(priority=1)), "unknown_field"),
    ("requested_at in seconds", "send-requests", raw(request_doc(requested_at=T0 // 1000)), "invalid_value"),
    ("message_id of 129 chars", "send-requests", raw(request_doc(message_id="m" * 129)), "invalid_value"),
    ("empty message_id", "send-requests", raw(request_doc(message_id="")), "invalid_value"),
    ("empty customer_id", "send-requests", raw(request_doc(customer_id="")), "invalid_value"),
    ("unknown status", "provider-callbacks", raw(callback_doc(status="read")), "unknown_status"),
    ("unknown callback field", "provider-callbacks", raw(callback_doc(channel="x")), "unknown_field"),
    ("missing event_id", "provider-callbacks", raw(callback_doc(drop=("event_id",))), "missing_field"),
    ("occurred_at in seconds", "provider-callbacks", raw(callback_doc(occurred_at=T0 // 1000)),
     "invalid_value"),
    ("is_machine as a string", "provider-callbacks", raw(callback_doc(is_machine="yes")), "wrong_type"),
    ("no message_id nor provider ids", "provider-callbacks", raw(callback_doc(drop=("message_id",))),
     "missing_field"),
    ("provider without provider_message_id", "provider-callbacks",
     raw(callback_doc(drop=("message_id",), provider="sendgrid")), "missing_field"),
    ("neither status nor http_status", "provider-callbacks", raw(callback_doc(drop=("status",))),
     "missing_field"),
    ("http_status out of range", "provider-callbacks",
     raw(callback_doc(drop=("status",), http_status=700)), "invalid_value"),
    ("unknown bounce_type", "provider-callbacks",
     raw(callback_doc(status="bounced", bounce_type="medium")), "invalid_value"),
    ("empty event_id", "provider-callbacks", raw(callback_doc(event_id="")), "invalid_value"),
    ("customer_id of 257 chars", "send-requests", raw(request_doc(customer_id="c" * 257)), "invalid_value"),
    ("reason of 2049 chars", "provider-callbacks", raw(callback_doc(reason="r" * 2049)), "invalid_value"),
    # Control characters in ids: "\x1f" separates provider and provider message id in a key, so
    # provider "a\x1fb" with id "c" would be provider "a" with id "b\x1fc".
    ("message_id with \\x1f", "send-requests", raw(request_doc(message_id="a\x1fb")), "invalid_value"),
    ("customer_id with NUL", "send-requests", raw(request_doc(customer_id="c\x00")), "invalid_value"),
    ("recipient with a newline", "send-requests", raw(request_doc(recipient="a@x.vn\n")), "invalid_value"),
    ("flow_id with DEL", "send-requests", raw(request_doc(flow_id="f\x7f")), "invalid_value"),
    ("campaign_id with a C1 control", "send-requests", raw(request_doc(campaign_id="c\x85")), "invalid_value"),
    ("step_id with a tab", "send-requests", raw(request_doc(step_id="s\t1")), "invalid_value"),
    ("provider with \\x1f", "send-requests", raw(request_doc(provider="sg\x1fx")), "invalid_value"),
    ("event_id with a newline", "provider-callbacks", raw(callback_doc(event_id="ev\n")), "invalid_value"),
    ("callback message_id with \\x1f", "provider-callbacks", raw(callback_doc(message_id="m\x1f")),
     "invalid_value"),
    ("callback provider with \\x1f", "provider-callbacks",
     raw(callback_doc(drop=("message_id",), provider="a\x1fb", provider_message_id="c")), "invalid_value"),
    ("provider_message_id with \\x1f", "provider-callbacks",
     raw(callback_doc(drop=("message_id",), provider="a", provider_message_id="b\x1fc")), "invalid_value"),
]


@pytest.mark.parametrize(("case", "topic", "payload", "error_type"), INVALID_RECORDS,
                         ids=[c[0] for c in INVALID_RECORDS])
def test_an_invalid_record_gets_a_precise_error_type(case, topic, payload, error_type):
    result = validate(topic, payload)
    assert not isinstance(result, (SendRequest, Callback)), result
    assert result.error_type == error_type
    assert result.error  # a message a human can act on


SCHEMA_EXPRESSIBLE = [c for c in INVALID_RECORDS if c[3] not in ("undecodable",)]


@pytest.mark.parametrize(("case", "topic", "payload", "error_type"), SCHEMA_EXPRESSIBLE,
                         ids=[c[0] for c in SCHEMA_EXPRESSIBLE])
def test_an_invalid_record_is_rejected_by_the_schema_too(case, topic, payload, error_type):
    assert schema_errors(load_schema(topic), orjson.loads(payload)) != []


# Explicit nulls are how optional fields are left out by a serialiser that writes every field.
NULL_PRESENCE_INVALID = [
    ("message_id null, no provider ids", callback_doc(message_id=None)),
    ("provider ids null", callback_doc(message_id=None, provider=None, provider_message_id=None)),
    ("status and http_status null", callback_doc(status=None, http_status=None)),
]


@pytest.mark.parametrize(("case", "doc"), NULL_PRESENCE_INVALID, ids=[c[0] for c in NULL_PRESENCE_INVALID])
def test_a_callback_the_parser_rejects_for_null_ids_or_status_is_rejected_by_the_schema(case, doc):
    result = parse_callback(raw(doc))
    assert not isinstance(result, Callback) and result.error_type == "missing_field"
    assert schema_errors(load_schema("provider-callbacks"), doc) != []


# ---------------------------------------------------------------------------------------------
# Valid records parse into the dataclasses, and satisfy the schema documents
# ---------------------------------------------------------------------------------------------

FULL_REQUEST = request_doc(provider="sendgrid", recipient="a@example.com", flow_id="flow-1",
                           campaign_id="camp-1", step_id="step-1",
                           attributes={"subject": "Hi", "tags": ["x"], "n": 1})
FULL_CALLBACK = callback_doc(status="bounced", http_status=550, provider="sendgrid",
                             provider_message_id="sg-1", reason_code="550", reason="mailbox full",
                             url="https://shop.example", is_machine=False, bounce_type="hard")

VALID_REQUESTS = [
    ("minimal", request_doc()),
    ("every field", FULL_REQUEST),
    ("optional fields null", request_doc(provider=None, recipient=None, flow_id=None, campaign_id=None,
                                         step_id=None, attributes=None)),
    ("message_id of 128 chars", request_doc(message_id="m" * 128)),
    ("unicode recipient", request_doc(recipient="Nguyễn Văn A")),
    ("ids at their limits, in emoji", request_doc(message_id="📨" * 128, customer_id="📨" * 256,
                                                  provider="📨" * 64, recipient="📨" * 512)),
    ("control characters in attributes", request_doc(attributes={"note": "a\x1fb\n"})),
] + [(f"action {a}", request_doc(action=a)) for a in
     ["email", "zalo_oa", "zns", "messenger", "sms", "ai_call", "http_request", "timer", "voucher",
      "sync", "start_flow", "other"]]

VALID_CALLBACKS = [
    ("minimal", callback_doc()),
    ("every field", FULL_CALLBACK),
    ("http_status only", callback_doc(drop=("status",), http_status=200)),
    ("provider ids only", callback_doc(drop=("message_id",), provider="esms", provider_message_id="p-9")),
    ("optional fields null", callback_doc(http_status=None, provider=None, provider_message_id=None,
                                          reason_code=None, reason=None, url=None, is_machine=None,
                                          bounce_type=None)),
    ("http_status with status null", callback_doc(status=None, http_status=500)),
    ("control characters in text", callback_doc(status="failed", reason="line 1\nline 2\x00", reason_code="5\t1",
                                                url="https://x.example/\x7f")),
] + [(f"status {s}", callback_doc(status=s)) for s in
     ["sent", "processing", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained",
      "bounced", "answered", "succeeded"]]


@pytest.mark.parametrize(("case", "doc"), VALID_REQUESTS, ids=[c[0] for c in VALID_REQUESTS])
def test_a_valid_request_parses_into_a_send_request(case, doc):
    result = parse_send_request(raw(doc))
    assert isinstance(result, SendRequest), result
    for name in (s.name for s in field_specs(SendRequest)):
        assert getattr(result, name) == doc.get(name), name


@pytest.mark.parametrize(("case", "doc"), VALID_CALLBACKS, ids=[c[0] for c in VALID_CALLBACKS])
def test_a_valid_callback_parses_into_a_callback(case, doc):
    result = parse_callback(raw(doc))
    assert isinstance(result, Callback), result
    for name in (s.name for s in field_specs(Callback)):
        assert getattr(result, name) == doc.get(name), name


@pytest.mark.parametrize(("case", "doc"), VALID_REQUESTS, ids=[c[0] for c in VALID_REQUESTS])
def test_a_valid_request_satisfies_the_schema(case, doc):
    assert schema_errors(load_schema("send-requests"), doc) == []


@pytest.mark.parametrize(("case", "doc"), VALID_CALLBACKS, ids=[c[0] for c in VALID_CALLBACKS])
def test_a_valid_callback_satisfies_the_schema(case, doc):
    assert schema_errors(load_schema("provider-callbacks"), doc) == []


def test_a_dead_letter_satisfies_the_schema():
    letter = DeadLetter(source_topic="send-requests", partition=3, offset=42, key=None,
                        payload="eyJ4Ijo=", payload_encoding="base64", error_type="undecodable",
                        error="not valid UTF-8 JSON", failed_at=T0)
    assert schema_errors(load_schema("dead-letters"), dataclasses.asdict(letter)) == []


def _emitted_changes() -> list[StatusChange]:
    """Status changes of a few realistic histories, straight from the core."""
    now = T0 + 3_600_000
    changes: list[StatusChange] = []
    for action, callbacks in [
        ("email", [callback_doc(event_id="e1", status="clicked", url="https://x.example"),
                   callback_doc(event_id="e2", status="clicked", url="https://y.example"),
                   callback_doc(event_id="e3", status="opened", is_machine=True),
                   callback_doc(event_id="e4", status="bounced", bounce_type="hard", reason_code="550"),
                   callback_doc(event_id="e5", status="unsubscribed")]),
        ("http_request", [callback_doc(event_id="h1", status=None, http_status=500, reason="boom")]),
        ("ai_call", [callback_doc(event_id="a1", status="answered")]),
    ]:
        state = core.new_state()
        changes += core.apply_request(state, SendRequest(**request_doc(action=action, recipient="r")), now).changes
        for doc in callbacks:
            changes += core.apply_callback(state, Callback(**doc), now).changes
    return changes


def test_every_emitted_status_change_satisfies_the_schema():
    changes = _emitted_changes()
    assert {c.kind for c in changes} == {"milestone", "engagement", "request"}
    for change in changes:
        assert schema_errors(load_schema("status-changes"), dataclasses.asdict(change)) == [], change


# ---------------------------------------------------------------------------------------------
# Plausible times (SENDTRACK_TIME_MAX_AGE_DAYS, SENDTRACK_TIME_MAX_AHEAD_SECONDS)
# ---------------------------------------------------------------------------------------------

NOW = 1_780_000_000_000  # 2026-05-28
DAY = 86_400_000
WINDOW = TimeWindow(max_age_ms=730 * DAY, max_ahead_ms=DAY)


@pytest.mark.parametrize(("case", "at", "accepted"), [
    ("now", NOW, True),
    ("730 days ago", NOW - 730 * DAY, True),
    ("730 days and 1 ms ago", NOW - 730 * DAY - 1, False),
    ("a day ahead", NOW + DAY, True),
    ("a day and 1 ms ahead", NOW + DAY + 1, False),
    ("2286, which ClickHouse's toDate counts in 2107", 9_999_999_999_999, False),
    ("2001", 1_000_000_000_000, False),
], ids=lambda v: v if isinstance(v, str) else "")
def test_times_outside_the_window_are_invalid_values(case, at, accepted):
    for topic, doc, name in (("send-requests", request_doc(requested_at=at), "requested_at"),
                             ("provider-callbacks", callback_doc(occurred_at=at), "occurred_at")):
        result = validate(topic, raw(doc), now_ms=NOW, window=WINDOW)
        if accepted:
            assert not hasattr(result, "error_type"), result
        else:
            assert result.error_type == "invalid_value" and name in result.error, result


def test_without_a_time_to_judge_at_only_the_epoch_range_is_checked():
    """The webhook adapter's call (callback_from_dict(doc)) keeps working as before."""
    assert isinstance(parse_send_request(raw(request_doc(requested_at=9_999_999_999_999))), SendRequest)
    assert isinstance(parse_callback(raw(callback_doc(occurred_at=1_000_000_000_000))), Callback)


def test_the_default_window_is_the_settings_default():
    from sendtrack.settings import Settings
    defaults = Settings()
    assert DEFAULT_TIME_WINDOW == TimeWindow(max_age_ms=int(defaults.time_max_age_days * DAY),
                                             max_ahead_ms=int(defaults.time_max_ahead_seconds * 1000))


@pytest.mark.parametrize(("record_ms", "now_ms", "judged"), [
    (NOW - 3_600_000, NOW, NOW - 3_600_000),  # read an hour after it was published: its own time
    (NOW - 30 * DAY, NOW, NOW - 30 * DAY),  # a backlog read a month late is not refused for it
    (NOW + 3_600_000, NOW, NOW),  # a producer's clock ahead of ours never widens the window ahead
    (None, NOW, NOW),  # no timestamp
    (-1, NOW, NOW),  # Kafka's "no timestamp"
])
def test_an_input_is_judged_at_its_records_time_so_a_re_read_gives_the_same_verdict(record_ms, now_ms, judged):
    assert judged_at(record_ms, now_ms) == judged
    if record_ms is not None and 0 < record_ms <= now_ms:
        assert judged_at(record_ms, now_ms + 7 * DAY) == judged  # the same record read again a week later
