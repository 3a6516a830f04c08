"""Readers' credentials: parsing, the constant-time check, loopback-only without readers."""

from __future__ import annotations

import base64

import pytest

from sendtrack.auth import Denied, Reader, Readers, is_loopback


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode(),
            "Host": "sendtrack.example:6066"}


def test_readers_are_name_password_pairs():
    readers = Readers("ana:one, bob:two:with:colons")
    assert readers.check("ana", "one") == Reader("ana")
    assert readers.check("bob", "two:with:colons") == Reader("bob")
    assert readers.check("ana", "two:with:colons") is None
    assert readers.check("nobody", "one") is None
    for bad in ("ana", "ana:", ":pw", "ana:one,bob"):
        with pytest.raises(ValueError):
            Readers(bad)


@pytest.mark.parametrize("headers,expected", [
    (basic("ana", "one"), Reader("ana")),
    ({"X-ClickHouse-User": "ana", "X-ClickHouse-Key": "one"}, Reader("ana")),
    (basic("ana", "wrong"), Denied(401, "wrong user name or password")),
    ({"X-ClickHouse-User": "ana"}, Denied(401, "wrong user name or password")),
    ({"Authorization": "Basic !!notbase64"}, Denied(401, "wrong user name or password")),
    ({"Authorization": "Bearer one"}, Denied(401, "credentials required (HTTP basic auth or "
                                                 "X-ClickHouse-User/X-ClickHouse-Key)")),
    ({}, Denied(401, "credentials required (HTTP basic auth or X-ClickHouse-User/X-ClickHouse-Key)")),
    ({**basic("ana", "one"), "Sec-Fetch-Site": "cross-site"}, Denied(403, "cross-site requests are refused")),
])
def test_configured_readers_from_anywhere(headers, expected):
    assert Readers("ana:one").authenticate(headers, "203.0.113.9") == expected


def test_without_readers_only_loopback_clients_naming_a_loopback_host():
    readers = Readers("")
    assert not readers.configured
    assert readers.authenticate({"Host": "127.0.0.1:6066"}, "127.0.0.1") == Reader("")
    assert readers.authenticate({"Host": "localhost"}, "::1") == Reader("")
    assert readers.authenticate({"Host": "[::1]:6066"}, "::ffff:127.0.0.1") == Reader("")
    for headers, peer in (({"Host": "127.0.0.1:6066"}, "192.0.2.7"),  # another machine
                          ({"Host": "127.0.0.1:6066"}, "172.17.0.1"),  # Docker's published port
                          ({"Host": "rebound.example:6066"}, "127.0.0.1"),  # DNS rebinding
                          ({}, "127.0.0.1"),
                          ({"Host": "localhost", "Sec-Fetch-Site": "cross-site"}, "127.0.0.1"),
                          ({"Host": "localhost"}, None)):
        assert isinstance(readers.authenticate(headers, peer), Denied), (headers, peer)


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1") and not is_loopback("")
    assert not is_loopback("localhost") and not is_loopback(None)


def test_admins_always_need_their_own_credentials():
    from sendtrack.auth import Denied, Readers, authenticate_admin

    admins = Readers("dpo:s3cret", "SENDTRACK_ADMINS")
    json = {"Content-Type": "application/json"}
    assert authenticate_admin(Readers(""), json) == Denied(
        403, "no admins are configured (SENDTRACK_ADMINS): erasure through the API is off")
    assert authenticate_admin(admins, json).status == 401  # loopback or not: no anonymous admin
    assert authenticate_admin(admins, {**json, "Authorization": "Basic " + b64("analyst:s3cret")}).status == 401
    assert authenticate_admin(admins, {**json, "Authorization": "Basic " + b64("dpo:wrong")}).status == 401
    assert authenticate_admin(admins, {**json, "Authorization": "Basic " + b64("dpo:s3cret"),
                                       "Sec-Fetch-Site": "cross-site"}).status == 403
    # A cross-site form (no Fetch Metadata from an old browser, cached basic credentials) is refused.
    form = {"Authorization": "Basic " + b64("dpo:s3cret"), "Content-Type": "application/x-www-form-urlencoded"}
    assert authenticate_admin(admins, form).status == 415
    assert authenticate_admin(admins, {**json, "Authorization": "Basic " + b64("dpo:s3cret")}).name == "dpo"
    with pytest.raises(ValueError, match="SENDTRACK_ADMINS must be"):
        Readers("nocolon", "SENDTRACK_ADMINS")


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_readers_can_be_scoped_to_one_workspace():
    readers = Readers("ana:one,hoa:two,none:three", workspaces="hoa=shop-hanoi, none=")
    assert readers.check("ana", "one") == Reader("ana", None)  # every workspace
    assert readers.check("hoa", "two") == Reader("hoa", "shop-hanoi")
    assert readers.check("none", "three") == Reader("none", "")  # requests that named no workspace
    assert readers.authenticate(basic("hoa", "two"), "203.0.113.9") == Reader("hoa", "shop-hanoi")
    for bad, why in (("bob=shop-1", "not in SENDTRACK_READERS"), ("hoa", "name=workspace"),
                     ("hoa=a,hoa=b", "twice"), ("hoa=" + "x" * 129, "128"), ("hoa=a\tb", "control")):
        with pytest.raises(ValueError, match=why):
            Readers("ana:one,hoa:two", workspaces=bad)
