"""Fixtures for the provider adapter tests: raw requests, test keys and a canonical-record check."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sendtrack.providers import RawWebhook

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "provider-callbacks.schema.json"
NOW_MS = 1_714_529_560_000


@pytest.fixture
def now_ms() -> int:
    return NOW_MS


@pytest.fixture(scope="session")
def make_raw() -> Callable[..., RawWebhook]:
    """A RawWebhook as the ingress would build it."""

    def make(provider: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
             query: dict[str, str] | None = None, method: str = "POST", url: str | None = None,
             received_at: int = NOW_MS) -> RawWebhook:
        return RawWebhook(
            provider=provider, method=method, path=f"/webhooks/{provider}", query=query or {},
            headers={k.lower(): v for k, v in (headers or {}).items()}, body=body,
            received_at=received_at, url=url or f"https://hooks.example.com/webhooks/{provider}",
        )

    return make


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _self_signed(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650)).sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="session")
def self_signed() -> Callable[[rsa.RSAPrivateKey], str]:
    """Makes a self-signed certificate (PEM) for an RSA key."""
    return _self_signed


@pytest.fixture(scope="session")
def sns_signer() -> tuple[rsa.RSAPrivateKey, str]:
    """An RSA key and a self-signed certificate (PEM) standing in for SNS's signing certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, _self_signed(key)


@pytest.fixture(scope="session")
def callback_schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="session")
def check_canonical(callback_schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Asserts that a callback satisfies schemas/provider-callbacks.schema.json and serialises."""
    properties = callback_schema["properties"]

    def check(record: dict[str, Any]) -> None:
        assert set(record) <= set(properties), set(record) - set(properties)
        assert None not in record.values(), record
        assert isinstance(record["event_id"], str) and record["event_id"]
        occurred_at = record["occurred_at"]
        assert type(occurred_at) is int
        assert properties["occurred_at"]["minimum"] <= occurred_at <= properties["occurred_at"]["maximum"]
        assert record.get("status") in properties["status"]["enum"]
        assert "message_id" in record or {"provider", "provider_message_id"} <= set(record)
        if "message_id" in record:
            assert 1 <= len(record["message_id"]) <= properties["message_id"]["maxLength"]
        if "bounce_type" in record:
            assert record["bounce_type"] in properties["bounce_type"]["enum"]
        if "is_machine" in record:
            assert type(record["is_machine"]) is bool
        for key in ("provider", "provider_message_id", "reason_code", "reason", "url"):
            assert key not in record or isinstance(record[key], str)
        orjson.dumps(record)

    return check
