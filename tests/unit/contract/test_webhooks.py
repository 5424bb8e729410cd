"""Webhooks, the pure part: settings, retry waits, event ids, the body and headers a receiver
gets (WAHA's format), and configuration mistakes named by key and line."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from chatscale_contract.configload import ConfigError, parse_config
from chatscale_contract.webhooks import (
    Event,
    Retries,
    Webhook,
    headers,
    hooks_text,
    session_hooks,
    sign,
    stored_hooks,
    ulid,
)

EVENT = Event(
    "1764650000123-0",
    "session.status",
    "alice",
    {"status": "WORKING"},
    {"workspace_id": "w1", "account_id": ""},
)


@pytest.mark.parametrize(
    ("policy", "waits"),
    [
        ("constant", [2, 2, 2, 2]),
        ("linear", [2, 4, 6, 8]),
        ("exponential", [2, 4, 8, 10]),  # capped at max_delay_seconds
    ],
)
def test_retry_waits_follow_the_policy(policy: str, waits: list[float]) -> None:
    retries = Retries.model_validate(
        {"policy": policy, "delay_seconds": 2, "max_delay_seconds": 10}
    )
    assert [retries.delay(n) for n in (1, 2, 3, 4)] == waits


def test_event_ids_are_ulids_of_the_stream_id_and_stable() -> None:
    assert EVENT.id == Event.parse(EVENT.stream_id, _fields(EVENT)).id, "same entry, same id"
    assert EVENT.id.startswith("evt_") and len(EVENT.id) == 4 + 26
    assert set(EVENT.id[4:]) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert _decode(EVENT.id[4:14]) == 1764650000123, "the first 10 characters are the time"
    other = Event("1764650000123-1", "session.status", "alice", {}, {})
    assert other.id != EVENT.id and other.id[4:14] == EVENT.id[4:14], "same ms, other entropy"
    replayed = Event("1764650099999-0", "session.status", "alice", {}, {}, origin=EVENT.stream_id)
    assert replayed.id == EVENT.id and replayed.timestamp_ms == 1764650000123
    elsewhere = Event.parse(EVENT.stream_id, _fields(EVENT), salt="another fleet")
    assert elsewhere.id != EVENT.id and elsewhere.id[4:14] == EVENT.id[4:14]


def test_ulid_orders_by_time() -> None:
    assert ulid(1, b"\xff" * 10) < ulid(2, b"\x00" * 10)
    assert ulid(0, b"\x00" * 10) == "0" * 26


def test_the_body_is_wahas() -> None:
    body = json.loads(EVENT.body())
    assert body == {
        "id": EVENT.id,
        "timestamp": 1764650000123,
        "event": "session.status",
        "session": "alice",
        "metadata": {"workspace_id": "w1", "account_id": ""},
        "me": None,
        "payload": {"status": "WORKING"},
        "engine": "chatscale",
    }


def test_headers_carry_the_id_time_and_a_verifiable_hmac() -> None:
    hook = Webhook.model_validate(
        {
            "url": "https://app.example/hook",
            "hmac": {"key": "s3cret"},
            "custom_headers": [{"name": "X-Tenant", "value": "t1"}],
        }
    )
    body = EVENT.body()
    sent = headers(hook, EVENT, body)
    assert sent["X-Webhook-Request-Id"] == EVENT.id
    assert sent["X-Webhook-Timestamp"] == "1764650000123"
    assert sent["X-Tenant"] == "t1" and sent["Content-Type"] == "application/json"
    assert sent["X-Webhook-Hmac-Algorithm"] == "sha512"
    expected = hmac.new(b"s3cret", body, hashlib.sha512).hexdigest()
    assert sent["X-Webhook-Hmac"] == expected == sign("s3cret", body)
    plain = headers(Webhook(url="http://app:8000/hook"), EVENT, body)
    assert "X-Webhook-Hmac" not in plain


def test_unparseable_entries_are_named() -> None:
    with pytest.raises(ValueError, match="outbox entry 1-0 is not an event"):
        Event.parse("1-0", {"session": "a"})
    with pytest.raises(ValueError, match="outbox entry 1-1 is not an event"):
        Event.parse("1-1", {"event": "session.status", "session": "a", "payload": "{"})


def test_receivers_pick_their_events() -> None:
    assert Webhook(url="http://a:1/x").wants("session.status")
    assert not Webhook(url="http://a:1/x").wants("message")
    assert Webhook(url="http://a:1/x", events=["*"]).wants("message")
    picky = Webhook(url="http://a:1/x", events=["message", "message.reaction"])
    assert picky.wants("message") and not picky.wants("message.any")


def test_wahas_other_events_may_be_listed_and_unknown_ones_not() -> None:
    # WAHA clients subscribe to many events by default; chatscale never sends these.
    assert session_hooks([{"url": "http://a:1/x", "events": ["group.join", "message.ack"]}])
    with pytest.raises(ValueError, match="unknown event"):
        session_hooks([{"url": "http://a:1/x", "events": ["mesage"]}])


def test_bad_webhook_settings_name_key_and_line() -> None:
    text = (
        "webhooks:\n"
        "  - url: ftp://files.example/in\n"  # line 2
        "    events: [session.status, message.recieved]\n"  # line 3
        "    retries:\n"
        "      attempts: 0\n"  # line 5
        "      policy: fibonacci\n"  # line 6
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml", {})
    found = [str(issue) for issue in caught.value.issues]
    assert any(f.startswith("c.yaml:2: webhooks.0.url:") and "http(s) URL" in f for f in found)
    assert any(
        f.startswith("c.yaml:3: webhooks.0.events:") and "message.recieved" in f for f in found
    )
    assert any(f.startswith("c.yaml:5: webhooks.0.retries.attempts:") for f in found)
    assert any(f.startswith("c.yaml:6: webhooks.0.retries.policy:") for f in found)


def _fields(event: Event) -> dict[str, str]:
    return {
        "event": event.event,
        "session": event.session,
        "payload": json.dumps(event.payload),
        "metadata": json.dumps(event.metadata),
    }


def _decode(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    return value


def test_a_sessions_own_receivers_in_wahas_form() -> None:
    given = [
        {
            "url": "https://app.example/hook",
            "events": ["session.status"],
            "hmac": {"key": "k1"},
            "retries": {"delaySeconds": 1, "attempts": 3, "policy": "constant"},
            "customHeaders": [{"name": "X-Tenant", "value": "t1"}],
        }
    ]
    (hook,) = session_hooks(given)
    assert hook.retries.delay_seconds == 1 and hook.custom_headers[0].value == "t1"
    assert stored_hooks(hooks_text([hook])) == [hook], "stored and read back alike"
    assert hooks_text([]) == "" and stored_hooks("") == [] and stored_hooks("{garbled") == []


NEGATIVE = {"delaySeconds": -1}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"url": "x"}, "webhooks must be a list of receivers"),
        ([{"url": "ftp://a.example/x"}], "webhooks[0].url: Value error, 'ftp://a.example/x'"),
        (
            [
                {"url": "http://a.example/x"},
                {"url": "http://b.example/x", "retries": {"delaySeconds": -1}},
            ],
            "webhooks[1].retries.delaySeconds: Input should be greater than or equal to 0",
        ),
        ([{"url": "http://a.example/x", "colour": 1}], "webhooks[0].colour: Extra inputs"),
        ([{"url": f"http://a.example/{n}"} for n in range(6)], "at most 5 receivers"),
    ],
)
def test_wrong_session_receivers_are_named(given: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        session_hooks(given)
    assert message in str(caught.value)
