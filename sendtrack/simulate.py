"""Realistic traffic for all twelve actions: delays, failures with real reason codes, duplicates,
reordering, callbacks naming only the provider id, a few orphans and malformed records."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson
from aiokafka import AIOKafkaProducer

from sendtrack.settings import Settings

# Per action: provider, and outcome paths with weights. Each path lists (status, reported): a
# status with reported=False is reached only by implication (e.g. an open never pixel-tracked
# before the click). Reason codes are the providers' own (shared/reference/providers.md).
PATHS: dict[str, tuple[str, list[tuple[float, list[tuple[str, bool]], Optional[tuple[str, str, str]]]]]] = {
    "email": ("sendgrid", [
        (0.35, [("processing", True), ("delivered", True)], None),
        (0.25, [("processing", True), ("delivered", True), ("opened", True)], None),
        (0.12, [("processing", True), ("delivered", True), ("opened", True), ("clicked", True)], None),
        (0.05, [("processing", True), ("delivered", False), ("opened", False), ("clicked", True)], None),
        (0.08, [("processing", True), ("bounced", True), ("failed", False)], ("550 5.1.1", "The email account that you tried to reach does not exist", "hard")),
        (0.05, [("failed", True)], ("invalid_email", "Invalid recipient address", "")),
        (0.05, [("processing", True), ("delivered", True), ("unsubscribed", True)], None),
        (0.05, [("processing", True), ("delivered", True), ("opened", True), ("complained", True)], None),
    ]),
    "zalo_oa": ("zalo", [
        (0.4, [("processing", True), ("delivered", True), ("opened", True)], None),
        (0.2, [("processing", True), ("delivered", True), ("opened", True), ("clicked", True)], None),
        (0.25, [("processing", True), ("delivered", True)], None),
        (0.15, [("failed", True)], ("-213", "User has not followed the Official Account", "")),
    ]),
    "zns": ("zalo", [
        (0.8, [("processing", True), ("delivered", True)], None),
        (0.1, [("processing", True)], None),
        (0.1, [("failed", True)], ("-124", "Phone number is invalid or not using Zalo", "")),
    ]),
    "messenger": ("messenger", [
        (0.5, [("delivered", True), ("opened", True)], None),
        (0.2, [("delivered", True)], None),
        (0.15, [("delivered", True), ("opened", True), ("clicked", True)], None),
        (0.15, [("failed", True)], ("551", "This person isn't available right now", "")),
    ]),
    "sms": ("esms", [
        (0.7, [("processing", True), ("delivered", True)], None),
        (0.1, [("processing", True), ("delivered", False), ("clicked", True)], None),
        (0.1, [("processing", True)], None),
        (0.1, [("failed", True)], ("99", "Unknown error from the carrier", "")),
    ]),
    "ai_call": ("retell", [
        (0.55, [("delivered", True), ("answered", True)], None),
        (0.3, [("delivered", True)], None),
        (0.15, [("failed", True)], ("dial_no_answer", "The customer did not pick up", "")),
    ]),
    "http_request": ("webhook", [
        (0.9, [("succeeded", True)], None),
        (0.1, [("failed", True)], ("500", "Internal Server Error", "")),
    ]),
    "timer": ("ladiflow", [(1.0, [], None)]),
    "voucher": ("ladiflow", [
        (0.8, [("processing", True), ("delivered", True)], None),
        (0.1, [("processing", True)], None),
        (0.1, [("failed", True)], ("out_of_stock", "No vouchers left in the pool", "")),
    ]),
    "sync": ("getresponse", [
        (0.9, [("succeeded", True)], None),
        (0.1, [("failed", True)], ("429", "Too Many Requests", "")),
    ]),
    "start_flow": ("ladiflow", [
        (0.95, [("succeeded", True)], None),
        (0.05, [("failed", True)], ("flow_inactive", "The target flow is not active", "")),
    ]),
    "other": ("ladiflow", [
        (0.9, [("succeeded", True)], None),
        (0.1, [("failed", True)], ("error", "The action failed", "")),
    ]),
}

ACTION_WEIGHTS = {"email": 30, "zalo_oa": 12, "zns": 12, "messenger": 8, "sms": 10, "ai_call": 4,
                  "http_request": 6, "timer": 6, "voucher": 3, "sync": 4, "start_flow": 3, "other": 2}

# Provider-side delay (ms) before each successive status.
DELAYS_MS = {"processing": (50, 2000), "delivered": (500, 20000), "opened": (10_000, 3_600_000),
             "clicked": (5_000, 600_000), "answered": (5_000, 40_000), "succeeded": (50, 3000),
             "failed": (100, 30_000), "bounced": (500, 60_000), "unsubscribed": (60_000, 3_600_000),
             "complained": (60_000, 3_600_000)}


# Emails of the workspaces of `generate(workspaces=...)`: a clean list, under every deliverability
# threshold's warning (2 % bounces, 5 % failures, 0.05 % complaints), where PATHS has the rates of a
# troubled sender.
CLEAN_EMAIL = [
    (0.45, [("processing", True), ("delivered", True)], None),
    (0.27, [("processing", True), ("delivered", True), ("opened", True)], None),
    (0.13, [("processing", True), ("delivered", True), ("opened", True), ("clicked", True)], None),
    (0.05, [("processing", True), ("delivered", False), ("opened", False), ("clicked", True)], None),
    (0.02, [("processing", True), ("bounced", True), ("failed", False)],
     ("550 5.1.1", "The email account that you tried to reach does not exist", "hard")),
    (0.03, [("failed", True)], ("invalid_email", "Invalid recipient address", "")),
    (0.001, [("processing", True), ("delivered", True), ("unsubscribed", True)], None),
    (0.0005, [("processing", True), ("delivered", True), ("opened", True), ("complained", True)], None),
]
# Emails of a workspace whose list has gone bad (`generate(bouncy=...)`): a third bounce, as after
# sending to an old purchased list; enough to cross the bounce rate's critical threshold.
BOUNCY_EMAIL = [
    (0.55, [("processing", True), ("delivered", True)], None),
    (0.10, [("processing", True), ("delivered", True), ("opened", True)], None),
    (0.35, [("processing", True), ("bounced", True), ("failed", False)],
     ("550 5.1.1", "The email account that you tried to reach does not exist", "hard")),
]


@dataclass
class Message:
    """One simulated send and what it must end as."""

    message_id: str
    action: str
    customer_id: str
    campaign_id: str
    flow_id: str
    step_id: str
    requested_at: int
    expected: set[str]
    failure: Optional[tuple[str, str, str]]
    workspace_id: str = ""


@dataclass
class Traffic:
    """Records to publish, in publication order, and the truth they encode."""

    records: list[tuple[str, Optional[bytes], bytes]] = field(default_factory=list)  # (topic kind, key, value)
    messages: list[Message] = field(default_factory=list)
    orphans: int = 0
    malformed: int = 0


# Recipients as a shop's list has them, so that the mailbox-provider and carrier breakdowns have
# something to show: email addresses over the common providers and a shop's own domain, Vietnamese
# mobile numbers (national and +84 forms) over the carriers. Chosen from the message's number, not
# from the random stream, so the traffic of a seed is otherwise what it was.
EMAIL_DOMAINS = ("gmail.com",) * 6 + ("yahoo.com", "yahoo.com.vn", "outlook.com", "hotmail.com", "icloud.com",
                                      "fpt.vn", "shop.example.vn")
PHONE_PREFIXES = ("098", "097", "086", "032", "035", "091", "088", "094", "090", "093", "077", "092", "058", "099",
                  "087", "055")


def recipient_of(action: str, i: int) -> str:
    if action == "email":
        return f"khach{i}@{EMAIL_DOMAINS[i * 7 % len(EMAIL_DOMAINS)]}"
    if action in ("sms", "zns", "ai_call"):
        number = f"{PHONE_PREFIXES[i * 5 % len(PHONE_PREFIXES)]}{i * 7919 % 10_000_000:07d}"
        return "+84 " + number[1:] if i % 4 == 0 else number
    return f"r{i}"


def generate(n_messages: int, seed: int = 7, start_ms: Optional[int] = None, run_id: str = "sim",
             duplicate_rate: float = 0.1, provider_id_only_rate: float = 0.3, orphan_rate: float = 0.005,
             malformed_rate: float = 0.005, reorder_window: int = 50, workspaces: tuple[str, ...] = (),
             bouncy: Optional[str] = None) -> Traffic:
    """A deterministic stream of requests and callbacks for `n_messages` sends: in turn in each of
    `workspaces` if given (else none is named), and in the `bouncy` one with BOUNCY_EMAIL's outcomes."""
    rnd = random.Random(seed)
    start_ms = start_ms or int(time.time() * 1000) - 3 * 86_400_000
    actions, weights = zip(*ACTION_WEIGHTS.items())
    timed: list[tuple[int, str, Optional[bytes], bytes]] = []
    traffic = Traffic()
    for i in range(n_messages):
        action = rnd.choices(actions, weights)[0]
        provider, paths = PATHS[action]
        workspace = workspaces[i % len(workspaces)] if workspaces else ""
        if action == "email" and workspace:
            paths = BOUNCY_EMAIL if workspace == bouncy else CLEAN_EMAIL
        _, path, failure = _pick(rnd, paths)
        mid = f"{run_id}-{i:08d}"
        requested_at = start_ms + rnd.randrange(0, 3 * 86_400_000)
        msg = Message(mid, action, f"cus-{rnd.randrange(n_messages // 3 + 1):06d}",
                      f"camp-{rnd.randrange(5)}", f"flow-{rnd.randrange(3)}", f"step-{rnd.randrange(4)}",
                      requested_at, {s for s, _ in path} | ({"sent"} if action != "http_request" else set()),
                      failure, workspace)
        traffic.messages.append(msg)
        request = {"message_id": mid, "action": action, "customer_id": msg.customer_id,
                   "requested_at": requested_at, "provider": provider, "recipient": recipient_of(action, i),
                   "flow_id": msg.flow_id, "campaign_id": msg.campaign_id, "step_id": msg.step_id}
        if workspace:
            request["workspace_id"] = workspace
        timed.append((requested_at, "send-requests", mid.encode(), orjson.dumps(request)))
        t = requested_at
        pmid = f"{provider}-{run_id}-{i:08d}"
        for n, (status, reported) in enumerate(path):
            t += rnd.randrange(*DELAYS_MS.get(status, (100, 1000)))
            if not reported:
                continue
            cb: dict[str, Any] = {"event_id": f"{mid}-{status}", "status": status, "occurred_at": t}
            if action in ("http_request", "sync") and rnd.random() < 0.5:
                del cb["status"]
                cb["http_status"] = 200 if status == "succeeded" else int(failure[0]) if failure else 500
            if status in ("failed", "bounced") and failure:
                cb.update(reason_code=failure[0], reason=failure[1])
                if failure[2]:
                    cb["bounce_type"] = failure[2]
            if status == "clicked":
                cb["url"] = "https://shop.example/sale"
            if n == 0:
                # The first callback carries both ids and registers the provider-id mapping.
                cb.update(message_id=mid, provider=provider, provider_message_id=pmid)
            elif rnd.random() < provider_id_only_rate:
                cb.update(provider=provider, provider_message_id=pmid)
            else:
                cb["message_id"] = mid
            key = mid.encode() if "message_id" in cb else None
            timed.append((t, "provider-callbacks", key, orjson.dumps(cb)))
            if rnd.random() < duplicate_rate:
                timed.append((t + rnd.randrange(0, 60_000), "provider-callbacks", key, orjson.dumps(cb)))
            if status in ("opened", "clicked") and rnd.random() < 0.3:
                # The same customer opening again: a new event id, an engagement event.
                again = dict(cb, event_id=f"{cb['event_id']}-again", occurred_at=t + 60_000)
                timed.append((t + 60_000, "provider-callbacks", key, orjson.dumps(again)))
    for j in range(int(n_messages * orphan_rate)):
        cb = {"event_id": f"{run_id}-orphan-{j}", "status": "delivered",
              "occurred_at": start_ms + rnd.randrange(0, 3 * 86_400_000), "message_id": f"{run_id}-ghost-{j}"}
        timed.append((cb["occurred_at"], "provider-callbacks", cb["message_id"].encode(), orjson.dumps(cb)))
        traffic.orphans += 1
    for j in range(int(n_messages * malformed_rate)):
        bad = rnd.choice([b"{not json", b"[1,2,3]", orjson.dumps({"message_id": f"{run_id}-bad-{j}"}),
                          orjson.dumps({"message_id": f"{run_id}-bad-{j}", "action": "fax",
                                        "customer_id": "c", "requested_at": start_ms})])
        timed.append((start_ms + rnd.randrange(0, 3 * 86_400_000), "send-requests", None, bad))
        traffic.malformed += 1
    timed.sort(key=lambda r: r[0])
    # Reorder: swap records within a window, so some callbacks overtake their request.
    for k in range(len(timed)):
        other = min(len(timed) - 1, k + rnd.randrange(0, reorder_window))
        if rnd.random() < 0.2:
            timed[k], timed[other] = timed[other], timed[k]
    traffic.records = [(kind, key, value) for _, kind, key, value in timed]
    return traffic


def _pick(rnd: random.Random, paths):
    total = sum(w for w, _, _ in paths)
    x = rnd.random() * total
    for item in paths:
        x -= item[0]
        if x <= 0:
            return item
    return paths[-1]


async def publish(settings: Settings, traffic: Traffic, rate: Optional[float] = None,
                  progress: bool = True) -> float:
    """Publish the records (at `rate` records/s if given); returns the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_broker, linger_ms=10,
                                max_batch_size=512 * 1024, acks="all")
    await producer.start()
    started = time.monotonic()
    total = len(traffic.records)
    try:
        pending = []
        for i, (kind, key, value) in enumerate(traffic.records):
            pending.append(await producer.send(settings.topic(kind), key=key, value=value))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate and i % 100 == 0:
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if progress and (i % 1000 == 0 or i == total - 1):
                _bar(i + 1, total, started)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    if progress:
        sys.stderr.write("\n")
    return time.monotonic() - started


def _bar(done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    elapsed = time.monotonic() - started
    rate = done / elapsed if elapsed > 0 else 0
    sys.stderr.write(f"\rsimulate: [{'#' * filled}{'.' * (width - filled)}] {done}/{total} records "
                     f"{rate:,.0f}/s")
    sys.stderr.flush()
