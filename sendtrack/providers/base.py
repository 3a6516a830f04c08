"""Types shared by every provider adapter: the raw request, the verdict, the secrets, the parse result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sendtrack.providers.replay import Nonce


@dataclass(frozen=True, slots=True)
class RawWebhook:
    """One HTTP request a provider made to /webhooks/<provider>, exactly as received."""

    provider: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    received_at: int  # ms since the epoch
    url: str = ""  # the full public URL the provider called (Twilio signs it)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to accept a webhook request, and the HTTP answer to give."""

    ok: bool
    status: int
    reason: str  # constant text: never a secret, never an echo of the request
    response_body: bytes | None = None
    content_type: str | None = None
    subscribe_url: str | None = None  # SNS SubscriptionConfirmation: the ingress GETs it
    nonce: Nonce | None = None  # a single-use token the ingress must not accept twice (Mailgun)


def accept(reason: str = "ok", **extra: Any) -> Verdict:
    """A 200 verdict."""
    return Verdict(True, 200, reason, **extra)


def refuse(status: int, reason: str) -> Verdict:
    """A refusal with its HTTP status."""
    return Verdict(False, status, reason)


def _secret(env: str) -> Any:
    return field(default=None, repr=False, metadata={"env": env})


@dataclass(frozen=True)
class ProviderSecrets:
    """Webhook secrets, one optional field per secret; '' or None means not configured."""

    sendgrid_public_key: str | None = _secret("SENDTRACK_SENDGRID_PUBLIC_KEY")  # PEM or base64 DER
    ses_sns_certificate_pem: str | None = _secret("SENDTRACK_SES_SNS_CERTIFICATE")  # one or more PEM certs
    ses_topic_arn: str | None = field(default=None, metadata={"env": "SENDTRACK_SES_TOPIC_ARN"})
    mailgun_signing_key: str | None = _secret("SENDTRACK_MAILGUN_SIGNING_KEY")
    zalo_oa_secret_key: str | None = _secret("SENDTRACK_ZALO_OA_SECRET_KEY")
    zalo_app_secret: str | None = _secret("SENDTRACK_ZALO_APP_SECRET")  # fallback when the OA key is unset
    messenger_app_secret: str | None = _secret("SENDTRACK_MESSENGER_APP_SECRET")
    messenger_verify_token: str | None = _secret("SENDTRACK_MESSENGER_VERIFY_TOKEN")
    esms_token: str | None = _secret("SENDTRACK_ESMS_TOKEN")
    twilio_auth_token: str | None = _secret("SENDTRACK_TWILIO_AUTH_TOKEN")
    retell_api_key: str | None = _secret("SENDTRACK_RETELL_API_KEY")


@dataclass(frozen=True, slots=True)
class AdapterError:
    """Why (part of) a webhook could not become canonical callbacks; becomes a dead letter."""

    error_type: str  # invalid_webhook | unknown_event | provider_error
    error: str


@dataclass(slots=True)
class ParseResult:
    """What one webhook request turned into."""

    callbacks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[AdapterError] = field(default_factory=list)
    # Messenger delivery/read receipts: everything sent to `recipient` up to `watermark`.
    watermarks: list[dict[str, Any]] = field(default_factory=list)
    # Events recognised but not tracked (e.g. inbound messages), by provider event name: count them.
    ignored: list[str] = field(default_factory=list)

    def invalid(self, error: str) -> ParseResult:
        """Record an invalid_webhook error and return self."""
        self.errors.append(AdapterError("invalid_webhook", error))
        return self

    def unknown(self, provider: str, event: str) -> None:
        """Record an event type this adapter does not map."""
        self.errors.append(AdapterError("unknown_event", f"{provider} event {event[:64]!r} is not mapped"))
