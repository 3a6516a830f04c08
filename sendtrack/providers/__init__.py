"""Provider webhook adapters: verify a raw request, parse it into canonical callbacks (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sendtrack.providers import esms, mailgun, messenger, retell, sendgrid, ses, twilio, zalo
from sendtrack.providers.base import (
    AdapterError,
    ParseResult,
    ProviderSecrets,
    RawWebhook,
    Verdict,
    refuse,
)
from sendtrack.providers.send_results import SendOutcome, send_result_to_callback

Verifier = Callable[..., Verdict]
Parser = Callable[[RawWebhook], ParseResult]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider's webhook: where it arrives, how it is checked and read."""

    name: str
    path: str
    methods: tuple[str, ...]
    secret_env: tuple[str, ...]  # settings that configure it (docs/providers.md)
    verify: Verifier
    parse: Parser


def _spec(module, methods: tuple[str, ...], *secret_env: str) -> ProviderSpec:
    return ProviderSpec(module.NAME, f"/webhooks/{module.NAME}", methods, secret_env, module.verify, module.parse)


PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec for spec in (
        _spec(sendgrid, ("POST",), "SENDTRACK_SENDGRID_PUBLIC_KEY"),
        _spec(ses, ("POST",), "SENDTRACK_SES_SNS_CERTIFICATE", "SENDTRACK_SES_TOPIC_ARN"),
        _spec(mailgun, ("POST",), "SENDTRACK_MAILGUN_SIGNING_KEY"),
        _spec(zalo, ("POST",), "SENDTRACK_ZALO_OA_SECRET_KEY", "SENDTRACK_ZALO_APP_SECRET"),
        _spec(messenger, ("GET", "POST"), "SENDTRACK_MESSENGER_APP_SECRET", "SENDTRACK_MESSENGER_VERIFY_TOKEN"),
        _spec(esms, ("GET", "POST"), "SENDTRACK_ESMS_TOKEN"),
        _spec(twilio, ("POST", "GET"), "SENDTRACK_TWILIO_AUTH_TOKEN"),
        _spec(retell, ("POST",), "SENDTRACK_RETELL_API_KEY"),
    )
}


def verify(raw: RawWebhook, secrets: ProviderSecrets, now_ms: int,
           max_body_bytes: int = 1_000_000, window_seconds: int = 300) -> Verdict:
    """The verdict of raw.provider's adapter (404 for an unknown provider, 405 for a wrong method)."""
    spec = PROVIDERS.get(raw.provider)
    if spec is None:
        return refuse(404, "unknown provider")
    if raw.method.upper() not in spec.methods:
        return refuse(405, "method not allowed")
    return spec.verify(raw, secrets, now_ms, max_body_bytes, window_seconds)


def parse(raw: RawWebhook) -> ParseResult:
    """The canonical callbacks, watermarks and errors of a verified request."""
    spec = PROVIDERS.get(raw.provider)
    if spec is None:
        return ParseResult().invalid("unknown provider")
    return spec.parse(raw)


__all__ = [
    "PROVIDERS",
    "AdapterError",
    "ParseResult",
    "ProviderSecrets",
    "ProviderSpec",
    "RawWebhook",
    "SendOutcome",
    "Verdict",
    "parse",
    "send_result_to_callback",
    "verify",
]
