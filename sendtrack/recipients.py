"""Who receives a message, as deliverability is judged: the mailbox provider of an email address
(from its domain) and the Vietnamese carrier of a phone number (from its prefix). Delivery problems
show per mailbox provider and per carrier, not per campaign.

The tables below are the maintained source. The sink writes them to ClickHouse at every start,
before it inserts (`apply`, tables `mailbox_domains` and `carrier_prefixes`, migration 0012), where
the ingest view classifies each status change as `mailbox_provider` and `carrier` do here, and
stores the classes (migration 0017; tests/unit/test_recipients.py checks that both agree). A change
to a table classifies the messages ingested after it; past messages keep their class.
"""

from __future__ import annotations

import re
from typing import Callable

# Email domain -> mailbox provider. Domains not listed are "other" (a company's own domain may be
# hosted by any of them; only its MX records would say which).
MAILBOX_PROVIDERS: dict[str, str] = {
    **dict.fromkeys(("gmail.com", "googlemail.com"), "gmail"),
    **dict.fromkeys(("yahoo.com", "yahoo.com.vn", "yahoo.co.uk", "yahoo.fr", "ymail.com", "rocketmail.com",
                     "aol.com"), "yahoo"),
    **dict.fromkeys(("outlook.com", "hotmail.com", "hotmail.co.uk", "live.com", "msn.com", "outlook.com.vn"),
                    "outlook"),
    **dict.fromkeys(("icloud.com", "me.com", "mac.com"), "icloud"),
    **dict.fromkeys(("proton.me", "protonmail.com", "pm.me"), "proton"),
    **dict.fromkeys(("zoho.com", "zohomail.com"), "zoho"),
    **dict.fromkeys(("yandex.com", "yandex.ru"), "yandex"),
    **dict.fromkeys(("gmx.com", "gmx.net", "gmx.de"), "gmx"),
    "qq.com": "qq", "163.com": "netease", "126.com": "netease",
}

# Vietnamese mobile prefixes (the first three digits of the national number, after the 2018
# renumbering) -> carrier.
VN_CARRIERS: dict[str, str] = {
    **dict.fromkeys(("032", "033", "034", "035", "036", "037", "038", "039", "086", "096", "097", "098"),
                    "viettel"),
    **dict.fromkeys(("081", "082", "083", "084", "085", "088", "091", "094"), "vinaphone"),
    **dict.fromkeys(("070", "076", "077", "078", "079", "089", "090", "093"), "mobifone"),
    **dict.fromkeys(("052", "056", "058", "092"), "vietnamobile"),
    **dict.fromkeys(("059", "099"), "gmobile"),
    "087": "itelecom",
    "055": "reddi",
}

_NOT_DIGIT = re.compile(r"[^0-9]")
# ClickHouse's lower() changes ASCII letters only; the view and this module must agree.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def mailbox_provider(recipient: str) -> str:
    """The mailbox provider of an email address; '' for a recipient that is no email address."""
    if "@" not in recipient:
        return ""
    return MAILBOX_PROVIDERS.get(recipient.rsplit("@", 1)[1].strip(" ").translate(_ASCII_LOWER), "other")


def national_number(recipient: str) -> str:
    """A Vietnamese mobile number as ten national digits (0xxxxxxxxx), else ''."""
    digits = _NOT_DIGIT.sub("", recipient)
    if len(digits) == 11 and digits.startswith("84"):
        digits = "0" + digits[2:]
    return digits if len(digits) == 10 and digits.startswith("0") else ""


def carrier(recipient: str) -> str:
    """The Vietnamese carrier of a phone number; '' for an email address or a number that is not a
    Vietnamese mobile number, 'other' for an unknown prefix."""
    if "@" in recipient:
        return ""
    number = national_number(recipient)
    return VN_CARRIERS.get(number[:3], "other") if number else ""


def current(ch) -> tuple[dict[str, str], dict[str, str]]:
    db = f"`{ch.database}`"
    _, domains = ch.query(f"SELECT domain, argMax(provider, set_at) FROM {db}.mailbox_domains GROUP BY domain")
    _, prefixes = ch.query(f"SELECT prefix, argMax(carrier, set_at) FROM {db}.carrier_prefixes GROUP BY prefix")
    return dict(domains), dict(prefixes)


def apply(ch, log: Callable[[str], None] = print) -> int:
    """Write the tables above to ClickHouse where they differ from what it holds (a domain or prefix
    dropped here is written as '', which the view reads as unknown). Returns the rows written."""
    have_domains, have_prefixes = current(ch)
    written = 0
    for table, key, value, wanted, have in (("mailbox_domains", "domain", "provider", MAILBOX_PROVIDERS, have_domains),
                                            ("carrier_prefixes", "prefix", "carrier", VN_CARRIERS, have_prefixes)):
        rows = {k: v for k, v in wanted.items() if have.get(k) != v}
        rows.update({k: "" for k, v in have.items() if k not in wanted and v})
        if rows:
            ch.insert(table, [list(rows), list(rows.values())], [key, value])
            written += len(rows)
    if written:
        log(f"recipients: {written} mailbox-domain and carrier-prefix rows written")
    return written
