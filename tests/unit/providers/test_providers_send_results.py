"""Synchronous send API responses -> one canonical callback registering message_id <-> provider id."""

from __future__ import annotations

import json

import pytest

from sendtrack.providers import send_result_to_callback

AT = 1_714_529_560_000


def result(provider: str, http_status: int, body: dict | bytes | str = b"", headers: dict | None = None,
           message_id: str = "msg-1") -> dict:
    raw = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    return send_result_to_callback(provider, message_id, http_status, headers or {}, raw, AT)


ACCEPTED = [
    ("sendgrid", 202, b"", {"X-Message-Id": "LRzXl66hSCqDG_ybkm2d3A"}, "processing", "LRzXl66hSCqDG_ybkm2d3A"),
    ("ses", 200, {"MessageId": "010001850b2e8a3f-000000"}, None, "processing", "010001850b2e8a3f-000000"),
    ("ses", 200, "<SendEmailResponse><SendEmailResult><MessageId>0100-xml</MessageId></SendEmailResult>"
                 "</SendEmailResponse>", None, "processing", "0100-xml"),
    ("mailgun", 200, {"id": "<20240501.1.AB@mg.shop.example.vn>", "message": "Queued. Thank you."}, None,
     "processing", "20240501.1.AB@mg.shop.example.vn"),
    ("zalo", 200, {"error": 0, "message": "Success",
                   "data": {"message_id": "e1a60e8890be9de4c4ab", "user_id": "31215806834323092"}}, None,
     "processing", "e1a60e8890be9de4c4ab"),
    ("zalo", 200, {"error": 0, "message": "Success", "data": {"msg_id": "5c4ee6a", "sent_time": "1714529559833",
                                                               "quota": {"dailyQuota": "5000"}}}, None,
     "processing", "5c4ee6a"),
    ("messenger", 200, {"recipient_id": "6812345678901234", "message_id": "m_AG5Hz2Uq"}, None, "sent", "m_AG5Hz2Uq"),
    ("esms", 200, {"CodeResult": "100", "CountRegenerate": 0, "SMSID": "d533459e"}, None, "processing", "d533459e"),
    ("twilio", 201, {"sid": "SM5a3f", "status": "queued"}, None, "processing", "SM5a3f"),
    ("twilio", 201, {"sid": "CA9f8e", "status": "queued"}, None, "sent", "CA9f8e"),
    ("retell", 201, {"call_id": "Jabr9TXY", "call_status": "registered"}, None, "sent", "Jabr9TXY"),
]


@pytest.mark.parametrize("provider, http_status, body, headers, status, provider_id", ACCEPTED)
def test_accepted_sends_register_the_mapping(check_canonical, provider, http_status, body, headers, status,
                                             provider_id):
    record = result(provider, http_status, body, headers)
    check_canonical(record)
    assert record["status"] == status
    assert (record["message_id"], record["provider"], record["provider_message_id"]) == \
        ("msg-1", provider, provider_id)
    assert record["occurred_at"] == AT


REJECTED = [
    ("sendgrid", 400, {"errors": [{"message": "The from address does not match a verified Sender Identity.",
                                   "field": "from", "help": None}]}, "http_400",
     "The from address does not match a verified Sender Identity."),
    ("ses", 400, {"message": "Email address is not verified."}, "MessageRejected", "Email address is not verified."),
    ("mailgun", 401, {"message": "Invalid private key"}, "http_401", "Invalid private key"),
    ("zalo", 200, {"error": -213, "message": "User has not followed OA"}, "-213", "User has not followed OA"),
    ("zalo", 200, {"error": -118, "message": "Zalo account not existed", "data": None}, "-118",
     "Zalo account not existed"),
    ("messenger", 400, {"error": {"message": "(#100) No matching user found", "type": "OAuthException",
                                  "code": 100, "error_subcode": 2018001, "fbtrace_id": "A1"}}, "100/2018001",
     "(#100) No matching user found"),
    ("esms", 200, {"CodeResult": "103", "ErrorMessage": "Balance not enough to send message"}, "103",
     "Balance not enough to send message"),
    ("twilio", 400, {"code": 21211, "message": "The 'To' number +84 is not a valid phone number.",
                     "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}, "21211",
     "The 'To' number +84 is not a valid phone number."),
    ("retell", 422, {"message": "to_number is invalid"}, "http_422", "to_number is invalid"),
]


@pytest.mark.parametrize("provider, http_status, body, reason_code, reason", REJECTED)
def test_rejected_sends_fail_with_reason(check_canonical, provider, http_status, body, reason_code, reason):
    headers = {"x-amzn-ErrorType": "MessageRejected:http://internal.amazon.com/"} if provider == "ses" else None
    record = result(provider, http_status, body, headers)
    check_canonical(record)
    assert (record["status"], record["reason_code"], record["reason"]) == ("failed", reason_code, reason)
    assert record["message_id"] == "msg-1"


def test_esms_146_keeps_the_smsid_and_124_is_an_idempotent_replay():
    wrong_template = result("esms", 200, {"CodeResult": "146", "SMSID": "abc", "ErrorMessage": "template"})
    assert (wrong_template["status"], wrong_template["provider_message_id"]) == ("failed", "abc")
    duplicate = result("esms", 200, {"CodeResult": "124", "SendStatus": "5"})
    assert duplicate["status"] == "processing" and "provider_message_id" not in duplicate


def test_http_200_with_an_unexpected_body_is_not_success_for_zalo_and_esms():
    for provider in ("zalo", "esms"):
        record = result(provider, 200, b"<html>gateway</html>")
        assert (record["status"], record["reason_code"]) == ("failed", "invalid_response")


def test_ses_xml_error():
    body = ("<ErrorResponse><Error><Type>Sender</Type><Code>MessageRejected</Code>"
            "<Message>Email address is not verified.</Message></Error></ErrorResponse>")
    record = result("ses", 400, body)
    assert (record["reason_code"], record["reason"]) == ("MessageRejected", "Email address is not verified.")


def test_same_response_same_event_id_and_distinct_per_message():
    first = result("twilio", 201, {"sid": "SM1"})
    assert first == result("twilio", 201, {"sid": "SM1"})
    assert first["event_id"] != result("twilio", 201, {"sid": "SM1"}, message_id="msg-2")["event_id"]


@pytest.mark.parametrize("provider, message_id, at", [("pigeon", "m", AT), ("esms", "", AT),
                                                      ("esms", "x" * 129, AT), ("esms", "m", 1_700_000)])
def test_caller_mistakes_raise(provider, message_id, at):
    with pytest.raises(ValueError):
        send_result_to_callback(provider, message_id, 200, {}, b"{}", at)
