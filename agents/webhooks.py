"""Provider webhooks: the verifying ingress (/webhooks/<provider>) and the agent that adapts them to callbacks."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any, Optional

import aiohttp
import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.web import Request, Response, View

from agents.app import app, callbacks_topic, engine_only, settings, webhooks_topic
from agents.faust_adapter import batch_agent
from agents.engine import TooLarge, emit_dead_letter, new_outbox, recipient_key, send_by_provider_id
from schemas.models import Invalid
from schemas.validate import callback_from_dict
from sendtrack import providers
from sendtrack.metrics import metrics
from sendtrack.providers import ProviderSecrets, RawWebhook, SeenTokens, Use, fingerprint

log = logging.getLogger(__name__)
CALLBACKS = callbacks_topic.get_topic_name()
WEBHOOKS = webhooks_topic.get_topic_name()

# Headers the adapters need (signatures are checked at the ingress; these carry event metadata).
KEPT_HEADERS = frozenset({
    "content-type", "x-amz-sns-message-type", "x-amz-sns-message-id", "x-amz-sns-topic-arn",
    "x-twilio-signature", "x-zevent-signature", "x-hub-signature-256", "x-retell-signature",
    "x-twilio-email-event-webhook-timestamp", "user-agent",
})
# Query parameters that are secrets (eSMS authenticates with a token in the URL): never published.
SECRET_QUERY = frozenset({"token", "hub.verify_token"})


def _pem(value: str) -> Optional[str]:
    """A PEM given inline or as a path to a file."""
    if not value:
        return None
    if "-----BEGIN" in value:
        return value
    return Path(value).read_text()


def load_secrets() -> ProviderSecrets:
    return ProviderSecrets(
        sendgrid_public_key=settings.sendgrid_public_key or None,
        ses_sns_certificate_pem=_pem(settings.ses_sns_certificate),
        ses_topic_arn=settings.ses_topic_arn or None,
        mailgun_signing_key=settings.mailgun_signing_key or None,
        zalo_oa_secret_key=settings.zalo_oa_secret_key or None,
        zalo_app_secret=settings.zalo_app_secret or None,
        messenger_app_secret=settings.messenger_app_secret or None,
        messenger_verify_token=settings.messenger_verify_token or None,
        esms_token=settings.esms_token or None,
        twilio_auth_token=settings.twilio_auth_token or None,
        retell_api_key=settings.retell_api_key or None,
    )


SECRETS = load_secrets()
# Mailgun's signature covers a single-use token, not the body: each token is accepted once. The
# ingress remembers the tokens it accepted; the adapter remembers the tokens it read, which covers
# requests accepted by other workers (every Mailgun record is in one partition: the key is the provider).
INGRESS_TOKENS = SeenTokens()
ADAPTER_TOKENS = SeenTokens()


def _public_url(request: Request) -> str:
    """The URL the provider called (Twilio signs it): SENDTRACK_WEBHOOK_PUBLIC_URL + the request's path
    and query, or '' without the setting. Never the Host header: whoever sends the request chooses it."""
    if settings.webhook_public_url:
        return settings.webhook_public_url.rstrip("/") + request.rel_url.path_qs
    return ""


def refused_by_configuration(secrets: ProviderSecrets, public_url: str) -> list[str]:
    """What a secret that is set still refuses, for lack of a companion setting (logged at start)."""
    out = []
    if secrets.ses_sns_certificate_pem and not secrets.ses_topic_arn:
        out.append("SES webhooks are refused (403): SENDTRACK_SES_SNS_CERTIFICATE is set but "
                   "SENDTRACK_SES_TOPIC_ARN is not (the certificate signs every AWS account's topics)")
    if secrets.twilio_auth_token and not public_url:
        out.append("Twilio webhooks are refused (403): SENDTRACK_TWILIO_AUTH_TOKEN is set but "
                   "SENDTRACK_WEBHOOK_PUBLIC_URL is not (Twilio signs the URL it called; the Host "
                   "header cannot be trusted for it)")
    return out


@app.task
async def log_refused_providers() -> None:
    """Say at start which configured providers are refused all the same."""
    for line in refused_by_configuration(SECRETS, settings.webhook_public_url):
        log.warning(line)


async def receive(request: Request, provider: str) -> Response:
    """Verify one webhook request; publish it raw and answer at once, or refuse it."""
    received_at = int(time.time() * 1000)
    limit = settings.max_payload_bytes
    body, too_large = b"", request.content_length is not None and request.content_length > limit
    if not too_large:
        # Read the whole body (a single read returns only what has arrived so far), up to the limit.
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                too_large = True
                break
        body = b"".join(chunks)
    raw = RawWebhook(
        provider=provider, method=request.method, path=request.path,
        query={k: v for k, v in request.query.items()},
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body, received_at=received_at, url=_public_url(request),
    )
    verdict = (providers.base.refuse(413, "body too large") if too_large
               else providers.verify(raw, SECRETS, received_at, max_body_bytes=limit, seen=INGRESS_TOKENS))
    if not verdict.ok:
        metrics.inc("webhooks_refused_total", 1, provider=provider, status=str(verdict.status))
        return aiohttp.web.json_response({"error": verdict.reason}, status=verdict.status)
    metrics.inc("webhooks_received_total", 1, provider=provider)
    if verdict.subscribe_url:
        # verify() reports it only for the configured SENDTRACK_SES_TOPIC_ARN (no topic: no confirmation).
        asyncio.ensure_future(_confirm_subscription(verdict.subscribe_url))
    if verdict.response_body is not None and request.method == "GET" and provider == "messenger":
        # The verification handshake carries no event.
        return aiohttp.web.Response(body=verdict.response_body, content_type=verdict.content_type or "text/plain")
    record = {
        "provider": provider, "method": raw.method, "path": raw.path,
        "query": {k: v for k, v in raw.query.items() if k not in SECRET_QUERY},
        "headers": {k: v for k, v in raw.headers.items() if k in KEPT_HEADERS},
        "body": base64.b64encode(body).decode(), "received_at": received_at, "url": raw.url.split("?")[0],
    }
    # Answer only once the broker has acknowledged the request: if Kafka is down, the provider
    # gets a 503 and retries later.
    try:
        await app.producer.send_and_wait(WEBHOOKS, provider.encode(), orjson.dumps(record), None, None, None)
    except (KafkaError, ProducerSendError, OSError) as exc:
        log.error("could not publish a %s webhook: %r", provider, exc)
        metrics.inc("webhooks_unpublished_total", 1, provider=provider)
        if verdict.nonce is not None:
            INGRESS_TOKENS.forget(verdict.nonce)  # not accepted after all: the provider's retry may use it
        return aiohttp.web.json_response({"error": "temporarily unavailable"}, status=503)
    if verdict.response_body is not None:
        return aiohttp.web.Response(body=verdict.response_body, content_type=verdict.content_type or "text/plain")
    return aiohttp.web.json_response({"status": "accepted"})


async def _confirm_subscription(url: str) -> None:
    """SNS SubscriptionConfirmation: GET the SubscribeURL AWS sent (the message was verified first)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url) as resp:
                log.warning("SNS subscription confirmation answered %s", resp.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.error("SNS subscription confirmation failed: %r", exc)


@app.page("/webhooks/{provider}")
class WebhookView(View):
    """POST (and GET for Messenger's handshake, eSMS and Twilio) from providers."""

    async def get(self, request: Request, provider: str) -> Response:
        return await receive(request, provider)

    async def post(self, request: Request, provider: str) -> Response:
        return await receive(request, provider)


def adapt(record: bytes) -> tuple[list[dict[str, Any]], list[Invalid], list[dict[str, Any]]]:
    """A published webhook request -> canonical callbacks, refusals, and Messenger watermarks."""
    doc = orjson.loads(record)
    raw = RawWebhook(
        provider=doc["provider"], method=doc["method"], path=doc["path"], query=doc["query"],
        headers=doc["headers"], body=base64.b64decode(doc["body"]), received_at=doc["received_at"],
        url=doc.get("url", ""),
    )
    if _replayed(raw):
        return [], [Invalid("invalid_webhook", f"{raw.provider} token already used by another request")], []
    result = providers.parse(raw)
    callbacks, refused = [], [Invalid(e.error_type, e.error) for e in result.errors]
    for cb in result.callbacks:
        checked = callback_from_dict(cb)
        if isinstance(checked, Invalid):
            refused.append(checked)
        else:
            callbacks.append(cb)
    return callbacks, refused, result.watermarks


def _replayed(raw: RawWebhook) -> bool:
    """Whether the request reuses a token an earlier record of this partition carried with another body
    (a second ingress worker accepted it). Same body = a provider retry: parsed, dedup drops it."""
    nonce = providers.nonce(raw)
    if nonce is None:
        return False
    # The record's receipt time, not the clock: re-reading the partition decides the same way.
    return ADAPTER_TOKENS.first_use(nonce, fingerprint(raw.body), raw.received_at) is Use.REPLAY


@engine_only(batch_agent(app, webhooks_topic, name="webhook-adapter"))
async def webhook_adapter(events: list) -> None:
    """Turn raw provider webhooks into canonical provider-callbacks (or dead letters)."""
    box = new_outbox()
    for event in events:
        msg = event.message
        origin = (msg.topic, msg.partition, msg.offset)
        try:
            callbacks, refused, watermarks = adapt(event.value)
        except Exception as exc:  # the boundary that turns an unreadable record into a dead letter
            emit_dead_letter(origin, event.key, event.value or b"",
                             Invalid("invalid_webhook", f"unreadable webhook record: {exc!r}"))
            continue
        savepoint = box.savepoint()
        try:
            for cb in callbacks:
                key = cb["message_id"].encode() if cb.get("message_id") else None
                box.add(CALLBACKS, key, orjson.dumps(cb))
            for invalid in refused:
                emit_dead_letter(origin, event.key, event.value or b"", invalid)
            for mark in watermarks:
                send_by_provider_id(recipient_key(mark["recipient"]), {
                    "op": "watermark", "status": mark["status"], "watermark": mark["watermark"],
                    "event_id": mark["event_id"], "occurred_at": mark["occurred_at"], "origin": list(origin)})
                metrics.inc("messenger_watermarks_total", 1, status=mark["status"])
        except TooLarge as exc:  # what it would publish cannot fit a record: none of it is published
            box.rollback(savepoint)
            emit_dead_letter(origin, event.key, event.value or b"", Invalid("too_large", str(exc)))
            continue
        metrics.inc("webhook_callbacks_total", len(callbacks), provider=orjson.loads(event.value)["provider"])
    await box.commit()
