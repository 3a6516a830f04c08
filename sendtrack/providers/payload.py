"""Defensive readers for untrusted provider payloads: never raise, return None or an empty value."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

NOT_JSON: Any = object()

_INT = re.compile(r"-?[0-9]{1,19}")


def decode_json(data: bytes | str) -> Any:
    """The JSON value in data, or NOT_JSON. Stdlib json keeps big integer IDs exact (orjson does not)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return NOT_JSON


def decode_form(body: bytes) -> dict[str, list[str]] | None:
    """An application/x-www-form-urlencoded body as name -> values, or None if it is not UTF-8."""
    try:
        text_body = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    form: dict[str, list[str]] = {}
    for name, value in parse_qsl(text_body, keep_blank_values=True):
        form.setdefault(name, []).append(value)
    return form


def obj(value: Any) -> dict[str, Any]:
    """value if it is a JSON object, else {}."""
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    """value if it is a JSON array, else []."""
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """A non-empty string, or an integer as a string (IDs sometimes arrive as numbers)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def integer(value: Any) -> int | None:
    """An integer, or a string holding one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def flag(value: Any) -> bool | None:
    """A boolean, or 'true'/'false' as a string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def utf8(value: str) -> bytes:
    """value as UTF-8 even if it holds lone surrogates (JSON '\\ud800' escapes)."""
    return value.encode("utf-8", "surrogatepass")
