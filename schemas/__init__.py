"""What flows through sendtrack: event records, their JSON Schema documents, and validation."""

from schemas.models import (
    ACTIONS,
    STATUSES,
    Callback,
    DeadLetter,
    Invalid,
    SendRequest,
    StatusChange,
)
from schemas.validate import ErrorType, parse_callback, parse_send_request, validate

__all__ = [
    "ACTIONS",
    "STATUSES",
    "Callback",
    "DeadLetter",
    "ErrorType",
    "Invalid",
    "SendRequest",
    "StatusChange",
    "parse_callback",
    "parse_send_request",
    "validate",
]
