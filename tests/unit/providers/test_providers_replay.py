"""The memory of single-use signature tokens: expiry, bound, same vs other request, forgetting."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sendtrack.providers.replay import Nonce, SeenTokens, Use

NOW_MS = 1_714_529_560_000


def test_first_use_then_repeat_or_replay_until_expiry():
    seen = SeenTokens()
    nonce = Nonce("mailgun:t1", NOW_MS + 300_000)
    assert seen.first_use(nonce, "body-a", NOW_MS) is Use.FIRST
    assert seen.first_use(nonce, "body-a", NOW_MS + 1) is Use.REPEAT
    assert seen.first_use(nonce, "body-b", NOW_MS + 300_000) is Use.REPLAY
    # After its expiry the token cannot verify any more (its timestamp left the window): forgotten.
    assert seen.first_use(Nonce("mailgun:t2", NOW_MS + 900_000), "x", NOW_MS + 300_001) is Use.FIRST
    assert len(seen) == 1
    assert seen.first_use(nonce, "body-b", NOW_MS + 300_001) is Use.FIRST


def test_bounded_it_refuses_new_tokens_rather_than_forget_live_ones():
    seen = SeenTokens(capacity=3)
    for n in range(3):
        assert seen.first_use(Nonce(f"k{n}", NOW_MS + 1_000 * (n + 1)), "", NOW_MS) is Use.FIRST
    assert seen.first_use(Nonce("k3", NOW_MS + 10_000), "", NOW_MS) is Use.FULL
    assert seen.first_use(Nonce("k0", NOW_MS + 1_000), "other", NOW_MS) is Use.REPLAY  # still remembered
    # Once the earliest expires there is room again.
    assert seen.first_use(Nonce("k3", NOW_MS + 10_000), "", NOW_MS + 1_001) is Use.FIRST


def test_forget_releases_a_token_and_only_that_one():
    seen = SeenTokens()
    a, b = Nonce("a", NOW_MS + 5_000), Nonce("b", NOW_MS + 5_000)
    seen.first_use(a, "", NOW_MS)
    seen.first_use(b, "", NOW_MS)
    seen.forget(a)
    seen.forget(Nonce("never-seen", NOW_MS))
    assert seen.first_use(a, "", NOW_MS) is Use.FIRST
    assert seen.first_use(b, "", NOW_MS) is Use.REPEAT


def test_many_tokens_expire_in_order_of_expiry_not_arrival():
    seen = SeenTokens()
    for n in range(1_000):
        seen.first_use(Nonce(f"k{n}", NOW_MS + (n % 10) * 1_000), "", NOW_MS)
    seen.first_use(Nonce("late", NOW_MS + 60_000), "", NOW_MS + 4_500)
    assert len(seen) == 1 + 500  # expiries +5 s … +9 s are still live


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from("xy"), st.integers(0, 2_000),
                          st.integers(0, 3_000)), max_size=60), st.integers(1, 4))
def test_a_live_token_is_accepted_at_most_once(calls, capacity):
    seen = SeenTokens(capacity=capacity)
    accepted: dict[str, int] = {}  # key -> expiry of the accepted use
    now = NOW_MS
    for key, body, step, lifetime in calls:
        now += step
        use = seen.first_use(Nonce(key, now + lifetime), body, now)
        if use is Use.FIRST:
            assert accepted.get(key, -1) < now, "a token was accepted twice while live"
            accepted[key] = now + lifetime
        assert len(seen) <= capacity
