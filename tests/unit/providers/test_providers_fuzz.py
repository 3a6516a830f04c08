"""Property tests: no body, header or query makes any provider's verify() or parse() raise."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendtrack.providers import PROVIDERS, ParseResult, ProviderSecrets, RawWebhook, Verdict, parse, verify

NOW_MS = 1_714_529_560_000
# Keys the adapters read, so generated JSON reaches past the first lookup.
VOCABULARY = [
    "event", "event_name", "eventType", "notificationType", "sg_event_id", "sg_message_id", "timestamp",
    "message_id", "type", "sg_machine_open", "url", "reason", "status", "Type", "Message", "MessageId",
    "TopicArn", "Timestamp", "Signature", "SignatureVersion", "SubscribeURL", "Subject", "Token", "mail",
    "messageId", "tags", "bounce", "bounceType", "bouncedRecipients", "delivery", "open", "userAgent", "click",
    "link", "subscription", "newTopicPreferences", "unsubscribeAll", "topicSubscriptionStatus", "signature",
    "token", "event-data", "id", "severity", "delivery-status", "code", "message", "headers", "message-id",
    "user-variables", "client-info", "bot", "app_id", "msg_id", "msg_ids", "delivery_time", "tracking_id",
    "error", "object", "entry", "messaging", "sender", "recipient", "watermark", "mids", "read", "postback",
    "payload", "quick_reply", "is_echo", "call", "call_id", "call_status", "disconnection_reason",
    "start_timestamp", "end_timestamp", "metadata",
]
EVENT_NAMES = ["open", "bounce", "Bounce", "Send", "Subscription", "failed", "opened", "user_seen_message",
               "user_received_message", "call_ended", "call_started", "page", "Notification",
               "SubscriptionConfirmation", "delivered", "Delivery", "Permanent", "ended", "not_connected"]
HEADERS = ["x-twilio-email-event-webhook-signature", "x-twilio-email-event-webhook-timestamp",
           "x-amz-sns-message-type", "x-zevent-signature", "x-zevent-timestamp", "x-hub-signature-256",
           "x-twilio-signature", "x-retell-signature"]
QUERY = ["token", "SMSID", "SendStatus", "SendSuccess", "SendFailed", "RequestId", "error_info",
         "hub.mode", "hub.verify_token", "hub.challenge", "MessageSid", "CallSid", "CallStatus"]

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(EVENT_NAMES), st.sampled_from(["1714529560", "1714529560000", "-114", "0", "mac=00"]),
)
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(QUERY), st.text(max_size=12), max_size=6).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode("utf-8", "surrogatepass")),
)
headers = st.dictionaries(st.sampled_from(HEADERS), st.text(max_size=40) | st.sampled_from(["v=1,d=ab", "mac="]),
                          max_size=4)
queries = st.dictionaries(st.sampled_from(QUERY) | st.text(max_size=5), st.text(max_size=20), max_size=5)
requests = st.builds(
    RawWebhook,
    provider=st.sampled_from(sorted(PROVIDERS)), method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.just("/webhooks/x"), query=queries, headers=headers, body=bodies,
    received_at=st.just(NOW_MS),
    url=st.sampled_from(["", "https://h.example/webhooks/twilio", "http://[::1]:99/x", "https://[bad", "x:y"]),
)


def secrets_with_real_keys(ec_key, sns_signer) -> ProviderSecrets:
    der = ec_key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return ProviderSecrets(
        sendgrid_public_key=base64.b64encode(der).decode(), ses_sns_certificate_pem=sns_signer[1],
        ses_topic_arn="arn:aws:sns:us-east-1:1:t", mailgun_signing_key="k", zalo_oa_secret_key="k",
        messenger_app_secret="k", messenger_verify_token="k", esms_token="k", twilio_auth_token="k",
        retell_api_key="k",
    )


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@FUZZ
@given(raw=requests)
def test_parse_never_raises_and_emits_only_canonical_records(check_canonical, raw):
    result = parse(raw)
    assert isinstance(result, ParseResult)
    for record in result.callbacks:
        check_canonical(record)
    for watermark in result.watermarks:
        assert watermark["status"] in ("delivered", "opened") and isinstance(watermark["watermark"], int)


@FUZZ
@given(raw=requests, configured=st.booleans())
def test_verify_never_raises(ec_key, sns_signer, raw, configured):
    secrets = secrets_with_real_keys(ec_key, sns_signer) if configured else ProviderSecrets()
    verdict = verify(raw, secrets, NOW_MS)
    assert isinstance(verdict, Verdict)
    assert verdict.status in (200, 400, 401, 403, 404, 405, 413)
    assert verdict.ok == (verdict.status == 200)


def mutated(value):
    """value with any of its leaves possibly replaced by a random JSON leaf."""
    if isinstance(value, dict):
        return st.fixed_dictionaries({k: mutated(v) for k, v in value.items()})
    if isinstance(value, list):
        return st.tuples(*(mutated(v) for v in value)).map(list)
    return st.just(value) | leaves


def as_json(template) -> st.SearchStrategy[bytes]:
    return mutated(template).map(lambda v: json.dumps(v).encode())


SES_INNER = {"eventType": "Bounce", "mail": {"timestamp": "2024-05-01T02:12:00.000Z", "messageId": "m",
                                              "tags": {"message_id": ["x"]}},
             "bounce": {"bounceType": "Permanent", "bounceSubType": "General", "timestamp": "2024-05-01T02:12:00Z",
                        "bouncedRecipients": [{"diagnosticCode": "550"}, {"status": "5.1.1"}]},
             "subscription": {"newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": [
                 {"topicName": "a", "subscriptionStatus": "OptOut"}]}}}
SHAPED = {
    "sendgrid": as_json([{"event": "bounce", "type": "blocked", "timestamp": 1714529560, "sg_event_id": "e",
                          "sg_message_id": "a.b", "message_id": "m", "sg_machine_open": True, "url": "u"}]),
    "ses": mutated(SES_INNER).map(json.dumps).flatmap(lambda inner: as_json(
        {"Type": "Notification", "MessageId": "s", "Message": inner, "Timestamp": "2024-05-01T02:12:39.000Z"})),
    "mailgun": as_json({"signature": {"timestamp": "1714529560", "token": "t", "signature": "s"},
                        "event-data": {"event": "failed", "id": "i", "timestamp": 1714529560.5,
                                       "severity": "permanent", "reason": "suppress-bounce",
                                       "message": {"headers": {"message-id": "<x@y>"}},
                                       "user-variables": {"message_id": "m"}, "client-info": {"bot": "apple"},
                                       "delivery-status": {"code": 550, "message": "no"}}}),
    "zalo": as_json({"app_id": "1", "event_name": "user_seen_message", "timestamp": "1714529560000",
                     "message": {"msg_id": "a", "msg_ids": ["a", "b"], "delivery_time": "1714529560000",
                                 "tracking_id": "t"}}),
    "messenger": as_json({"object": "page", "entry": [{"id": "p", "messaging": [
        {"sender": {"id": "u"}, "recipient": {"id": "p"}, "timestamp": 1714529560000,
         "delivery": {"mids": ["m1"], "watermark": 1714529560000}},
        {"sender": {"id": "u"}, "timestamp": "1714529560", "postback": {"payload": '{"message_id":"m"}'}},
        {"sender": {"id": "u"}, "message": {"quick_reply": {"payload": '{"message_id":"m"}'}}}]}]}),
    "retell": as_json({"event": "call_ended", "call": {"call_id": "c", "call_status": "not_connected",
                                                       "disconnection_reason": "dial_busy",
                                                       "end_timestamp": 1714529560000,
                                                       "metadata": {"message_id": "m"}}}),
}
shaped = st.sampled_from(sorted(SHAPED)).flatmap(lambda name: st.tuples(st.just(name), SHAPED[name]))
form_params = st.fixed_dictionaries({
    "SMSID": st.text(max_size=6), "SendSuccess": st.sampled_from(["0", "1", "x", ""]),
    "SendFailed": st.sampled_from(["0", "1", "-1"]), "SendStatus": st.sampled_from(["1", "4", "5", "9", ""]),
    "error_info": st.sampled_from(['{"error":-114,"message":"m"}', "%7B%22error%22%3A-1%7D", "{", ""]),
    "RequestId": st.text(max_size=140), "MessageSid": st.text(max_size=4), "CallSid": st.text(max_size=4),
    "MessageStatus": st.sampled_from(["failed", "read", "x"]), "CallStatus": st.sampled_from(
        ["completed", "in-progress", "busy", "queued"]), "CallDuration": st.sampled_from(["0", "9", "x"]),
    "AnsweredBy": st.sampled_from(["human", "machine_start", "unknown", "fax"]),
    "Timestamp": st.sampled_from(["Wed, 01 May 2024 02:12:35 +0000", "nope", ""]),
})


@FUZZ
@given(case=shaped)
def test_parse_of_provider_shaped_payloads_with_random_leaves(check_canonical, make_raw, case):
    provider, body = case
    result = parse(make_raw(provider, body))
    for record in result.callbacks:
        check_canonical(record)


@FUZZ
@given(params=form_params, provider=st.sampled_from(["esms", "twilio"]), method=st.sampled_from(["GET", "POST"]))
def test_parse_of_form_callbacks_with_random_values(check_canonical, make_raw, params, provider, method):
    body = urlencode(params).encode() if method == "POST" else b""
    result = parse(make_raw(provider, body, method=method, query={} if method == "POST" else params))
    for record in result.callbacks:
        check_canonical(record)
