"""Amazon SES event publishing through SNS HTTP(S) notifications, signed by a configured SNS certificate."""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sendtrack.providers import checks
from sendtrack.providers.base import ParseResult, ProviderSecrets, RawWebhook, Verdict, accept, refuse
from sendtrack.providers.canonical import callback, event_hash, iso_to_ms, message_id
from sendtrack.providers.payload import NOT_JSON, decode_json, flag, items, obj, text, utf8

NAME = "ses"
NOTIFICATION = "Notification"
CONFIRMATIONS = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
# SNS signs these fields, in this order (docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message...).
_SIGNED_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SIGNED_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
# SNS retries keep a message's Timestamp (its publication time) and signature, and an HTTP/S
# delivery policy retries for at most 3,600 s, a hard limit (docs.aws.amazon.com/sns/latest/dg/
# sns-message-delivery-retries.html). The signature covers Message and MessageId (the event id), so a
# replay inside this horizon is a duplicate that dedup drops.
REDELIVERY_SECONDS = 3600
# Apple Mail Privacy Protection fetches images with this bare user agent (reference §5d).
_APPLE_PROXY_AGENT = "Mozilla/5.0"
NO_TOPIC = refuse(403, "not configured: no topic ARN")
NOT_SNS_URL = refuse(400, "SubscribeURL is not an SNS URL")


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """SNS signature (v1 SHA1withRSA, v2 SHA256withRSA) against the configured certificate, then the
    configured topic (required), then the time: up to the window ahead, the window + 1 h behind."""
    refused = checks.precheck(raw, max_body_bytes, secrets.ses_sns_certificate_pem)
    if refused:
        return refused
    # AWS signs every account's topics with the same regional certificate: the certificate alone
    # would accept anyone's topic, and confirm anyone's subscription.
    if not checks.configured(secrets.ses_topic_arn):
        return NO_TOPIC
    keys = _certificate_keys(secrets.ses_sns_certificate_pem.strip())
    if not keys:
        return refuse(403, "not configured: unreadable certificate")
    doc = decode_json(raw.body)
    if not isinstance(doc, dict) or text(doc.get("Type")) not in (NOTIFICATION, *CONFIRMATIONS):
        return checks.UNPARSEABLE
    header_type = raw.headers.get("x-amz-sns-message-type")
    if header_type and header_type != doc["Type"]:
        return refuse(400, "message type header does not match the body")
    signature = text(doc.get("Signature"))
    if not signature:
        return checks.MISSING
    signed = _string_to_sign(doc)
    digest = _HASHES.get(text(doc.get("SignatureVersion")) or "")
    if signed is None or digest is None:
        return checks.BAD
    if not checks.within_window(iso_to_ms(doc.get("Timestamp")), now_ms, window_seconds, REDELIVERY_SECONDS):
        return checks.STALE
    if not _signed_by(keys, signature, signed, digest()):
        return checks.BAD
    if doc.get("TopicArn") != secrets.ses_topic_arn.strip():
        return refuse(403, "topic not allowed")
    if doc["Type"] == "SubscriptionConfirmation":
        return _confirmation(doc)
    return accept()


@lru_cache(maxsize=4)
def _certificate_keys(pem: str) -> tuple[rsa.RSAPublicKey, ...]:
    """The RSA keys of every certificate in the PEM bundle (several allow a rotation)."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        return ()
    keys = (c.public_key() for c in certificates)
    return tuple(k for k in keys if isinstance(k, rsa.RSAPublicKey))


def _string_to_sign(doc: dict[str, Any]) -> bytes | None:
    fields = _SIGNED_NOTIFICATION if doc["Type"] == NOTIFICATION else _SIGNED_CONFIRMATION
    parts = []
    for name in fields:
        value = doc.get(name)
        if name == "Subject" and value is None:
            continue  # signed only when present
        if not isinstance(value, str):
            return None
        parts.append(f"{name}\n{value}\n")
    return utf8("".join(parts))


def _signed_by(keys: tuple[rsa.RSAPublicKey, ...], signature: str, signed: bytes,
               digest: hashes.HashAlgorithm) -> bool:
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except ValueError:
        return False
    for key in keys:
        try:
            key.verify(raw_signature, signed, padding.PKCS1v15(), digest)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


def _confirmation(doc: dict[str, Any]) -> Verdict:
    """Report the SubscribeURL for the ingress to GET, only if it points at SNS over HTTPS and
    confirms the (already checked) topic of the message."""
    url = text(doc.get("SubscribeURL")) or ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return NOT_SNS_URL
    if parts.scheme != "https" or not _SNS_HOST.fullmatch(host):
        return NOT_SNS_URL
    if parse_qs(parts.query).get("TopicArn") != [doc["TopicArn"]]:
        return NOT_SNS_URL
    return accept("subscription confirmation", subscribe_url=url)


def parse(raw: RawWebhook) -> ParseResult:
    """The SES event inside an SNS Notification, fanned out per recipient."""
    result = ParseResult()
    doc = decode_json(raw.body)
    if not isinstance(doc, dict):
        return result.invalid("ses body is not a JSON object")
    kind = text(doc.get("Type"))
    if kind in CONFIRMATIONS:
        result.ignored.append(kind)
        return result
    if kind != NOTIFICATION:
        return result.invalid("ses body is not an SNS notification")
    message = decode_json(doc["Message"]) if isinstance(doc.get("Message"), str) else NOT_JSON
    if not isinstance(message, dict):
        return result.invalid("SNS Message is not a JSON object")
    fallback_ms = iso_to_ms(doc.get("Timestamp")) or raw.received_at
    _add_event(result, message, text(doc.get("MessageId")), fallback_ms)
    return result


def _add_event(result: ParseResult, message: dict[str, Any], sns_id: str | None, fallback_ms: int) -> None:
    name = text(message.get("eventType")) or text(message.get("notificationType")) or ""
    if name in ("AmazonSnsSubscriptionSucceeded", "Received"):
        result.ignored.append(name)
        return
    handler = _EVENTS.get(name)
    if handler is None:
        result.unknown(NAME, name)
        return
    mail = obj(message.get("mail"))
    provider_message_id = text(mail.get("messageId"))
    own_id = _tag(mail, "message_id")
    if provider_message_id is None and own_id is None:
        result.invalid("ses event has neither mail.messageId nor a message_id tag")
        return
    entries = handler(message)
    if not entries:
        result.ignored.append(name)
        return
    mail_time = iso_to_ms(mail.get("timestamp")) or fallback_ms
    for index, (status, at, attributes) in enumerate(entries):
        occurred_at = at or mail_time
        result.callbacks.append(callback(
            NAME, status, occurred_at,
            provider_message_id=provider_message_id,
            message_id=own_id,
            event_id=_event_id(sns_id, index, len(entries), provider_message_id or own_id, status, occurred_at),
            **attributes,
        ))


def _tag(mail: dict[str, Any], name: str) -> str | None:
    """The first value of a message tag (SES tags are name -> list of values)."""
    values = items(obj(mail.get("tags")).get(name))
    return message_id(values[0]) if values else None


def _event_id(sns_id: str | None, index: int, count: int, key: str, status: str, at: int) -> str:
    """SNS MessageId (retries reuse it), suffixed with the index when one message fans out."""
    if sns_id is None:
        return event_hash(NAME, key, status, str(at), str(index))
    return sns_id if count == 1 else f"{sns_id}:{index}"


_Entry = tuple[str, int | None, dict[str, Any]]


def _send(message: dict[str, Any]) -> list[_Entry]:
    return [("sent", None, {})]


def _delivery_delay(message: dict[str, Any]) -> list[_Entry]:
    delay = obj(message.get("deliveryDelay"))
    at = iso_to_ms(delay.get("timestamp"))
    code = text(delay.get("delayType"))
    recipients = [obj(r) for r in items(delay.get("delayedRecipients"))] or [{}]
    return [("processing", at, {"reason_code": code, "reason": text(r.get("diagnosticCode"))})
            for r in recipients]


def _delivery(message: dict[str, Any]) -> list[_Entry]:
    delivery = obj(message.get("delivery"))
    recipients = items(delivery.get("recipients")) or [None]
    return [("delivered", iso_to_ms(delivery.get("timestamp")), {}) for _ in recipients]


def _reject(message: dict[str, Any]) -> list[_Entry]:
    return [("failed", None, {"reason_code": "Reject", "reason": text(obj(message.get("reject")).get("reason"))})]


def _rendering_failure(message: dict[str, Any]) -> list[_Entry]:
    failure = obj(message.get("failure"))
    return [("failed", None, {"reason_code": "RenderingFailure", "reason": text(failure.get("errorMessage"))})]


def _bounce(message: dict[str, Any]) -> list[_Entry]:
    bounce = obj(message.get("bounce"))
    # Permanent = hard; Transient and Undetermined = soft (reference §8).
    bounce_type = "hard" if bounce.get("bounceType") == "Permanent" else "soft"
    at = iso_to_ms(bounce.get("timestamp"))
    code = text(bounce.get("bounceSubType")) or text(bounce.get("bounceType"))
    recipients = [obj(r) for r in items(bounce.get("bouncedRecipients"))] or [{}]
    return [("bounced", at, {"bounce_type": bounce_type, "reason_code": code,
                             "reason": text(r.get("diagnosticCode"))}) for r in recipients]


def _complaint(message: dict[str, Any]) -> list[_Entry]:
    complaint = obj(message.get("complaint"))
    at = iso_to_ms(complaint.get("timestamp"))
    code = text(complaint.get("complaintFeedbackType"))
    recipients = items(complaint.get("complainedRecipients")) or [None]
    return [("complained", at, {"reason_code": code}) for _ in recipients]


def _open(message: dict[str, Any]) -> list[_Entry]:
    opened = obj(message.get("open"))
    # SES has no machine-open flag; only Apple's bare proxy user agent is flagged (reference §5d).
    machine = True if opened.get("userAgent") == _APPLE_PROXY_AGENT else None
    return [("opened", iso_to_ms(opened.get("timestamp")), {"is_machine": machine})]


def _click(message: dict[str, Any]) -> list[_Entry]:
    click = obj(message.get("click"))
    return [("clicked", iso_to_ms(click.get("timestamp")), {"url": text(click.get("link"))})]


def _subscription(message: dict[str, Any]) -> list[_Entry]:
    """An unsubscribe (from all topics, or a new topic opt-out); other preference changes are not tracked."""
    subscription = obj(message.get("subscription"))
    new = obj(subscription.get("newTopicPreferences"))
    old = obj(subscription.get("oldTopicPreferences"))
    unsubscribed_all = flag(new.get("unsubscribeAll")) and not flag(old.get("unsubscribeAll"))
    if not unsubscribed_all and not (_opted_out(new) - _opted_out(old)):
        return []
    return [("unsubscribed", iso_to_ms(subscription.get("timestamp")),
             {"reason_code": text(subscription.get("source"))})]


def _opted_out(preferences: dict[str, Any]) -> set[str]:
    topics = (obj(t) for t in items(preferences.get("topicSubscriptionStatus")))
    return {str(t.get("topicName")) for t in topics if t.get("subscriptionStatus") == "OptOut"}


_EVENTS = {
    "Send": _send,
    "DeliveryDelay": _delivery_delay,
    "Delivery": _delivery,
    "Reject": _reject,
    "Rendering Failure": _rendering_failure,
    "RenderingFailure": _rendering_failure,
    "Bounce": _bounce,
    "Complaint": _complaint,
    "Open": _open,
    "Click": _click,
    "Subscription": _subscription,
}
