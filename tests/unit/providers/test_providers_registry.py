"""The provider registry and the rules every provider shares: size limit, configuration, secrecy, time."""

from __future__ import annotations

import dataclasses

import pytest

from sendtrack.providers import PROVIDERS, ProviderSecrets, RawWebhook, parse, verify
from sendtrack.providers.canonical import epoch_to_ms, event_hash, iso_to_ms, rfc2822_to_ms

NOW_MS = 1_714_529_560_000
SECRET = "s3cr3t-value-that-must-not-leak"
ALL_SECRETS = ProviderSecrets(
    sendgrid_public_key=SECRET, ses_sns_certificate_pem=SECRET, mailgun_signing_key=SECRET,
    zalo_oa_secret_key=SECRET, zalo_app_secret=SECRET, messenger_app_secret=SECRET,
    messenger_verify_token=SECRET, esms_token=SECRET, twilio_auth_token=SECRET, retell_api_key=SECRET,
)


def test_registry_names_and_paths():
    assert set(PROVIDERS) == {"sendgrid", "ses", "mailgun", "zalo", "messenger", "esms", "twilio", "retell"}
    for name, spec in PROVIDERS.items():
        assert spec.name == name and spec.path == f"/webhooks/{name}"
        assert spec.secret_env and all(env.startswith("SENDTRACK_") for env in spec.secret_env)


def test_secret_settings_are_documented_env_names():
    envs = {f.name: f.metadata["env"] for f in dataclasses.fields(ProviderSecrets)}
    assert envs["sendgrid_public_key"] == "SENDTRACK_SENDGRID_PUBLIC_KEY"
    assert envs["ses_sns_certificate_pem"] == "SENDTRACK_SES_SNS_CERTIFICATE"
    assert envs["ses_topic_arn"] == "SENDTRACK_SES_TOPIC_ARN"
    assert envs["esms_token"] == "SENDTRACK_ESMS_TOKEN"
    assert envs["retell_api_key"] == "SENDTRACK_RETELL_API_KEY"


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_unconfigured_provider_refuses_everything(make_raw, provider):
    for method in PROVIDERS[provider].methods:
        verdict = verify(make_raw(provider, b"[]", method=method), ProviderSecrets(), NOW_MS)
        assert (verdict.ok, verdict.status, verdict.reason) == (False, 403, "not configured")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_body_size_is_checked_first(make_raw, provider):
    big = make_raw(provider, b"x" * 1_001)
    for secrets in (ALL_SECRETS, ProviderSecrets()):
        verdict = verify(big, secrets, NOW_MS, max_body_bytes=1_000)
        assert (verdict.ok, verdict.status) == (False, 413)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_reasons_and_reprs_never_show_secrets(make_raw, provider):
    assert SECRET not in repr(ALL_SECRETS)
    headers = {"x-twilio-email-event-webhook-signature": SECRET, "x-twilio-email-event-webhook-timestamp": "1",
               "x-zevent-signature": SECRET, "x-hub-signature-256": SECRET, "x-twilio-signature": SECRET,
               "x-retell-signature": SECRET}
    raw = make_raw(provider, b'{"app_id":"1","timestamp":"1"}', headers=headers, query={"token": "x"})
    verdict = verify(raw, ALL_SECRETS, NOW_MS)
    assert not verdict.ok and SECRET not in verdict.reason and SECRET not in repr(verdict)


def test_unknown_provider_and_wrong_method(make_raw):
    assert verify(make_raw("pigeon", b""), ALL_SECRETS, NOW_MS).status == 404
    assert parse(make_raw("pigeon", b"")).errors[0].error_type == "invalid_webhook"
    assert verify(make_raw("sendgrid", b"", method="GET"), ALL_SECRETS, NOW_MS).status == 405


def test_raw_webhook_carries_the_public_url():
    raw = RawWebhook("twilio", "POST", "/webhooks/twilio", {}, {}, b"", NOW_MS, url="https://x/webhooks/twilio")
    assert raw.url == "https://x/webhooks/twilio"


@pytest.mark.parametrize("value, expected", [
    (1_714_529_560, 1_714_529_560_000),  # SendGrid seconds
    ("1714529560", 1_714_529_560_000),  # Messenger seconds string
    (1_521_472_262.908181, 1_521_472_262_908),  # Mailgun float seconds
    ("1699003881354", 1_699_003_881_354),  # Zalo ms string
    (1_458_668_856_253, 1_458_668_856_253),  # Messenger ms
    (0, None), (-5, None), ("", None), ("12ab", None), (True, None), (None, None), (float("nan"), None),
    (10**40, None), ("١٢٣", None),
])
def test_epoch_to_ms(value, expected):
    assert epoch_to_ms(value) == expected


def test_iso_and_rfc2822_times():
    assert iso_to_ms("2017-08-05T00:41:02.669Z") == 1_501_893_662_669
    assert iso_to_ms("2017-08-05T00:41:02") == 1_501_893_662_000
    assert rfc2822_to_ms("Sat, 05 Aug 2017 00:41:02 +0000") == 1_501_893_662_000
    for junk in ("yesterday", "", None, 12, "0001-01-01T00:00:00Z"):
        assert iso_to_ms(junk) is None and rfc2822_to_ms(junk) is None


def test_event_hash_is_short_hex_and_stable():
    digest = event_hash("twilio", "SM1", "delivered", "1")
    assert digest == event_hash("twilio", "SM1", "delivered", "1") and len(digest) == 32
    assert digest != event_hash("twilio", "SM1", "delivered", "2")
