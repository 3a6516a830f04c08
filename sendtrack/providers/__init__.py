"""Provider webhook adapters: verify a raw request, parse it into canonical callbacks (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sendtrack.providers import checks, esms, mailgun, messenger, retell, sendgrid, ses, twilio, zalo
from sendtrack.providers.base import (
    AdapterError,
    ParseResult,
    ProviderSecrets,
    RawWebhook,
    Verdict,
    refuse,
)
from sendtrack.providers.replay import Nonce, SeenTokens, Use, fingerprint
from sendtrack.providers.send_results import SendOutcome, send_result_to_callback

Verifier = Callable[..., Verdict]
Parser = Callable[[RawWebhook], ParseResult]
NonceReader = Callable[[RawWebhook, int], "Nonce | None"]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider's webhook: where it arrives, how it is checked and read."""

    name: str
    path: str
    methods: tuple[str, ...]
    secret_env: tuple[str, ...]  # settings that configure it (docs/providers.md)
    verify: Verifier
    parse: Parser
    nonce: NonceReader | None = None  # the single-use token of a request, where the signature has one


def _spec(module, methods: tuple[str, ...], *secret_env: str) -> ProviderSpec:
    return ProviderSpec(module.NAME, f"/webhooks/{module.NAME}", methods, secret_env, module.verify, module.parse,
                        getattr(module, "nonce", None))


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
           max_body_bytes: int = 1_000_000, window_seconds: int = 300, seen: SeenTokens | None = None) -> Verdict:
    """The verdict of raw.provider's adapter (404 for an unknown provider, 405 for a wrong method).

    With `seen` (the ingress's token memory), a verified request whose single-use token was already
    accepted is refused (403 `replayed token`), and a memory full of live tokens answers 503; without
    it, replays inside the window go undetected."""
    spec = PROVIDERS.get(raw.provider)
    if spec is None:
        return refuse(404, "unknown provider")
    if raw.method.upper() not in spec.methods:
        return refuse(405, "method not allowed")
    verdict = spec.verify(raw, secrets, now_ms, max_body_bytes, window_seconds)
    if not verdict.ok or verdict.nonce is None or seen is None:
        return verdict
    use = seen.first_use(verdict.nonce, fingerprint(raw.body), now_ms)
    if use is Use.FULL:
        return refuse(503, "replay memory full")
    return verdict if use is Use.FIRST else checks.REPLAYED


def nonce(raw: RawWebhook, window_seconds: int = 300) -> Nonce | None:
    """The single-use token of a (verified) request, for providers whose signature has one (Mailgun)."""
    spec = PROVIDERS.get(raw.provider)
    if spec is None or spec.nonce is None:
        return None
    return spec.nonce(raw, window_seconds)


def parse(raw: RawWebhook) -> ParseResult:
    """The canonical callbacks, watermarks and errors of a verified request."""
    spec = PROVIDERS.get(raw.provider)
    if spec is None:
        return ParseResult().invalid("unknown provider")
    return spec.parse(raw)


__all__ = [
    "PROVIDERS",
    "AdapterError",
    "Nonce",
    "ParseResult",
    "ProviderSecrets",
    "ProviderSpec",
    "RawWebhook",
    "SeenTokens",
    "SendOutcome",
    "Use",
    "Verdict",
    "fingerprint",
    "nonce",
    "parse",
    "send_result_to_callback",
    "verify",
]
