"""Deliverability alerts (sendtrack/alerts.py): a record per state change of a rate, never while the
state holds, numbered per rate."""

from __future__ import annotations

import orjson

from sendtrack.alerts import Published, changes, key_of, read


def rate(state: str, measured: bool = True, workspace: str = "shop-1", metric: str = "bounce", **kw) -> dict:
    return {"workspace": workspace, "period": "24h", "action": "email", "provider": "sendgrid",
            "mailbox_provider": "*", "metric": metric, "events": 12, "volume": 100, "rate": 0.12,
            "warning": 0.05, "critical": 0.1, "measured": measured, "state": state, **kw}


def key(workspace: str = "shop-1", metric: str = "bounce") -> bytes:
    return key_of({"workspace_id": workspace, "period": "24h", "action": "email", "provider": "sendgrid",
                   "mailbox_provider": "*", "metric": metric})


def test_a_state_change_is_published_once_with_its_figures():
    out = changes({}, [rate("critical"), rate("ok", metric="complaint")], at_ms=5)
    assert [(k, v["state"], v["previous_state"], v["sequence"]) for k, v in out] == [(key(), "critical", "ok", 1)]
    value = out[0][1]
    assert (value["workspace_id"], value["events"], value["volume"], value["rate"], value["critical"]) == \
        ("shop-1", 12, 100, 0.12, 0.1)
    assert orjson.loads(out[0][0]) == ["shop-1", "24h", "email", "sendgrid", "*", "bounce"]
    # The state holds: nothing; it moves: the next number.
    assert changes({key(): Published("critical", 1)}, [rate("critical", rate=0.3)], at_ms=6) == []
    again = changes({key(): Published("critical", 1)}, [rate("warning")], at_ms=7)
    assert [(v["state"], v["previous_state"], v["sequence"]) for _, v in again] == [("warning", "critical", 2)]


def test_under_the_minimum_volume_or_gone_from_the_period_is_ok():
    assert changes({}, [rate("critical", measured=False)], at_ms=1) == []
    out = changes({key(): Published("warning", 3)}, [rate("ok", measured=False)], at_ms=1)
    assert [(v["state"], v["sequence"]) for _, v in out] == [("ok", 4)]
    gone = changes({key(): Published("critical", 2), key("shop-2"): Published("ok", 2)}, [], at_ms=1)
    assert [(orjson.loads(k)[0], v["state"], v["previous_state"], v["sequence"], v["volume"]) for k, v in gone] == \
        [("shop-1", "ok", "critical", 3, 0)]


def test_workspaces_are_separate_rates():
    out = changes({key("shop-1"): Published("critical", 1)}, [rate("critical", workspace="shop-1"),
                                                                rate("critical", workspace="shop-2")], at_ms=1)
    assert [orjson.loads(k)[0] for k, _ in out] == ["shop-2"]


def test_a_record_reads_back_as_what_was_published():
    _, value = changes({}, [rate("warning")], at_ms=1)[0]
    assert read(orjson.dumps(value)) == Published("warning", 1)
