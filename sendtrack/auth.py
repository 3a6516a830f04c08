"""Who may read customer data: readers' credentials, checked in constant time (docs/security.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True, slots=True)
class Reader:
    """A reader allowed to see customer data; `name` is '' for an unauthenticated loopback client.
    `workspace` is the one workspace a scoped reader sees (SENDTRACK_READER_WORKSPACES), None for
    a reader of every workspace."""

    name: str
    workspace: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request to a reading endpoint is refused: HTTP status and a message for the client."""

    status: int
    message: str


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Readers:
    """The configured readers (SENDTRACK_READERS = "name:password,name:password"), and the workspace
    each scoped one is limited to (SENDTRACK_READER_WORKSPACES = "name=workspace,name=workspace")."""

    def __init__(self, spec: str, setting: str = "SENDTRACK_READERS", workspaces: str = "") -> None:
        self._passwords: dict[str, bytes] = {}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            name, sep, password = item.partition(":")
            if not sep or not name or not password:
                raise ValueError(f"{setting} must be 'name:password' pairs separated by commas")
            self._passwords[name] = _digest(password)
        self.workspaces = parse_workspaces(workspaces, self._passwords)

    def __len__(self) -> int:
        return len(self._passwords)

    @property
    def configured(self) -> bool:
        return bool(self._passwords)

    def check(self, name: str, password: str) -> Optional[Reader]:
        """The reader with this name and password, or None. The comparison takes the same time
        whether the name exists or not, and whatever the password."""
        expected = self._passwords.get(name)
        ok = hmac.compare_digest(expected if expected is not None else b"\0" * 32, _digest(password))
        return Reader(name, self.workspaces.get(name)) if ok and expected is not None else None

    def authenticate(self, headers: Mapping[str, str], peer: Optional[str]) -> Reader | Denied:
        """A request's reader, from HTTP basic auth or ClickHouse's X-ClickHouse-User/-Key headers.

        Browsers' cross-site requests are refused whatever they carry (a page the operator opens
        must not read or query through the operator's credentials or loopback). With no readers
        configured, only loopback clients that name a loopback host are served: a DNS-rebinding
        page names its own host."""
        if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return Denied(403, "cross-site requests are refused")
        name, password = _credentials(headers)
        if self.configured:
            if name is None:
                return Denied(401, "credentials required (HTTP basic auth or X-ClickHouse-User/X-ClickHouse-Key)")
            reader = self.check(name, password or "")
            return reader if reader is not None else Denied(401, "wrong user name or password")
        if not is_loopback(peer) or _host_name(headers.get("Host", "")) not in LOOPBACK_HOSTS:
            return Denied(403, "no readers are configured (SENDTRACK_READERS): reading endpoints answer "
                               "loopback clients only")
        return Reader("")


def parse_workspaces(spec: str, readers: Mapping[str, object]) -> dict[str, str]:
    """SENDTRACK_READER_WORKSPACES: "name=workspace" pairs, each naming a configured reader once.
    A workspace is what send requests carry (at most 128 characters, no control characters; ''
    is the workspace of requests that name none)."""
    scoped: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, workspace = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"SENDTRACK_READER_WORKSPACES must be 'name=workspace' pairs separated by commas, "
                             f"not {item!r}")
        if name not in readers:
            raise ValueError(f"SENDTRACK_READER_WORKSPACES names {name!r}, who is not in SENDTRACK_READERS")
        if name in scoped:
            raise ValueError(f"SENDTRACK_READER_WORKSPACES names {name!r} twice: a reader sees one workspace")
        if len(workspace) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in workspace):
            raise ValueError(f"SENDTRACK_READER_WORKSPACES: {name!r}'s workspace is longer than 128 characters "
                             "or has control characters")
        scoped[name] = workspace
    return scoped


def authenticate_admin(admins: Readers, headers: Mapping[str, str]) -> Reader | Denied:
    """An admin's request (SENDTRACK_ADMINS): credentials always, even from loopback; none
    configured means the admin endpoints are off. A reader's credentials are not an admin's."""
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return Denied(403, "cross-site requests are refused")
    # A form a page posts cannot set this type without the browser asking first (CORS preflight,
    # which the worker never grants), whether or not the browser sends Fetch Metadata.
    if headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
        return Denied(415, "send Content-Type: application/json")
    if not admins.configured:
        return Denied(403, "no admins are configured (SENDTRACK_ADMINS): erasure through the API is off")
    name, password = _credentials(headers)
    if name is None:
        return Denied(401, "admin credentials required (HTTP basic auth)")
    admin = admins.check(name, password or "")
    return admin if admin is not None else Denied(401, "wrong admin name or password")


def basic_auth_header(spec: str) -> Optional[str]:
    """The Authorization header of the first reader in SENDTRACK_READERS (the CLI reads the
    worker's report API as that reader), or None when none is configured."""
    first = next((part.strip() for part in spec.split(",") if part.strip()), "")
    if not first:
        return None
    return "Basic " + base64.b64encode(first.encode()).decode()


def _credentials(headers: Mapping[str, str]) -> tuple[Optional[str], Optional[str]]:
    auth = headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            name, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", ""  # malformed: a failed login, not an anonymous one
        return name, password
    if "X-ClickHouse-User" in headers:
        return headers["X-ClickHouse-User"], headers.get("X-ClickHouse-Key", "")
    return None, None


def _host_name(host: str) -> str:
    """The host part of a Host header (without the port)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(peer: Optional[str]) -> bool:
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
