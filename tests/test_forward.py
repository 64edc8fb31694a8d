"""The forwarder on a task.Clock with a fake HTTP client and an in-memory
storage: schedule, Retry-After, dead letters, pause, order, concurrency."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from email.utils import format_datetime
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from kwp.config import ConfigError, parse_config
from kwp.forward import (
    ERROR_PAUSE,
    FAST_ANSWER,
    MAX_BODY_KEPT,
    MAX_RETRY_AFTER,
    Forwarder,
    Forwarders,
    backoff,
    retry_after_seconds,
)
from kwp.notify import Notifier
from kwp.storage import DEAD, PENDING, QueueState
from tests.forward_support import FakeClient, MemoryStorage

URL = "http://target.invalid/hook"


def config(forward=None, **channel):
    data = {
        "channels": [
            {"name": "ch", "token": "t", **channel, "forward": {"url": URL, "interval-seconds": 1, **(forward or {})}}
        ]
    }
    return parse_config(data)


def make(forward=None, script=(), randomness=lambda: 0.0, storage=None, **channel):
    clock = Clock()
    kit = SimpleNamespace(
        clock=clock,
        storage=storage or MemoryStorage(),
        notifier=Notifier(),
        client=FakeClient(clock, script),
        outcomes=[],
    )
    kit.config = config(forward, **channel)
    channel = kit.config.channel("ch")
    kit.forwarder = Forwarder(
        channel,
        channel.consumers[0],
        frozenset({"x-ignored"}),
        kit.storage,
        kit.notifier,
        clock,
        kit.client,
        report=lambda name, consumer, outcome, seconds: kit.outcomes.append((name, outcome)),
        randomness=randomness,
        grace=5,
    )
    kit.forwarder.startService()

    def post(body=b'{"n": 1}', headers=None):
        webhook_id = kit.storage.add("ch", body, headers)
        kit.notifier.fire(("ch", "default"))
        return webhook_id

    kit.post = post
    return kit


def test_backoff_doubles_from_interval_with_jitter_and_cap():
    assert [backoff(2, 60, n, 0.0) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff(2, 60, 1, 0.999) == pytest.approx(2 * 1.24975)
    assert backoff(2, 60, 5, 0.999) == pytest.approx(32 * 1.24975)
    assert backoff(2, 60, 6, 0.0) == 60
    assert backoff(2, 60, 6, 0.999) == pytest.approx(60 * (1 - 0.25 * 0.999))
    assert backoff(1, 3600, 10_000, 0.5) == 3600 * 0.875


def test_retry_after_seconds_and_http_date():
    now = 1_700_000_000.0
    assert retry_after_seconds("120", now) == 120
    date = format_datetime(datetime.fromtimestamp(now + 90, timezone.utc), usegmt=True)
    assert retry_after_seconds(date, now) == pytest.approx(90)
    past = format_datetime(datetime.fromtimestamp(now - 90, timezone.utc), usegmt=True)
    assert retry_after_seconds(past, now) == 0
    assert retry_after_seconds("99999999", now) == MAX_RETRY_AFTER
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_delivers_at_once_on_insert_with_stored_headers_and_own_headers():
    kit = make()
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-ignored": "dropped",
        "connection": "keep-alive",
        "x-kwp-attempt": "99",
    }
    raw = b'{ "b" : 1,\n "a" : [1.50] }'
    webhook_id = kit.post(raw, headers)
    [sent] = kit.client.sent
    assert sent.at == 0 and sent.url == URL and sent.body == raw
    assert sent.header("x-github-event") == "push" and sent.header("content-type") == "application/json"
    assert sent.header("x-ignored") is None and sent.header("connection") is None
    assert sent.delivery_id == f"ch-{webhook_id}" and sent.attempt == 1
    assert sent.kwargs["allow_redirects"] is False
    sent.respond(200)
    assert kit.storage.item(webhook_id) is None
    assert kit.storage.states["ch", "default"].last_success_at == 0
    assert kit.outcomes == [("ch", "ok")]


def test_backoff_schedule_on_the_clock():
    # With zero jitter: retries 1, 2, 4, then 5 (the cap) seconds after each failure.
    kit = make({"max-delay-seconds": 5})
    webhook_id = kit.post()
    failed_at = []
    for _ in range(6):
        [sent] = kit.client.waiting()
        failed_at.append(kit.clock.seconds())
        sent.respond(503, b"busy")
        while not kit.client.waiting():
            kit.clock.advance(0.25)
    gaps = [b.at - a for a, b in zip(failed_at, kit.client.sent[1:])]
    assert gaps == [1, 2, 4, 5, 5, 5]
    assert [s.attempt for s in kit.client.sent] == [1, 2, 3, 4, 5, 6, 7]
    assert len({s.delivery_id for s in kit.client.sent}) == 1
    item = kit.storage.item(webhook_id)
    assert item.forward_attempts == 6 and item.state == PENDING
    assert item.last_error == "unexpected status 503: busy"
    assert kit.outcomes[-1] == ("ch", "unexpected_status")


def test_jitter_stays_between_schedule_and_a_quarter_more():
    kit = make({"interval-seconds": 8}, randomness=lambda: 0.5)
    webhook_id = kit.post()
    kit.client.sent[0].respond(500)
    assert kit.storage.item(webhook_id).next_attempt_at == 9
    kit.clock.advance(8.99)
    assert len(kit.client.sent) == 1
    kit.clock.advance(0.01)
    assert len(kit.client.sent) == 2


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_waits_at_least_that_long(status):
    kit = make({"interval-seconds": 1})
    kit.post()
    kit.client.sent[0].respond(status, headers={"Retry-After": "120"})
    kit.clock.advance(119.9)
    assert len(kit.client.sent) == 1
    kit.clock.advance(0.1)
    assert len(kit.client.sent) == 2


def test_retry_after_is_ignored_on_other_statuses_and_never_shortens_backoff():
    kit = make({"interval-seconds": 10})
    kit.post()
    kit.client.sent[0].respond(500, headers={"Retry-After": "120"})
    kit.clock.advance(10)
    assert len(kit.client.sent) == 2
    kit.client.sent[1].respond(429, headers={"Retry-After": "1"})
    kit.clock.advance(19.9)
    assert len(kit.client.sent) == 2
    kit.clock.advance(0.1)
    assert len(kit.client.sent) == 3


def test_max_attempts_parks_the_webhook_dead_and_the_next_one_goes_on():
    kit = make({"max-attempts": 3})
    first = kit.post(b'{"n": 1}')
    second = kit.post(b'{"n": 2}')
    for attempt in range(3):
        kit.clock.advance(10 if attempt else 0)
        [sent] = kit.client.waiting()
        assert sent.body == b'{"n": 1}'
        sent.fail(ConnectionRefusedError("nobody home"))
    item = kit.storage.item(first)
    assert item.state == DEAD and item.forward_attempts == 3 and item.next_attempt_at is None
    assert "ConnectionRefusedError" in item.last_error
    [sent] = kit.client.waiting()
    assert sent.body == b'{"n": 2}'
    sent.respond(204)
    assert kit.storage.item(second) is None
    kit.clock.advance(10_000)
    assert kit.client.waiting() == [] and len(kit.client.sent) == 4
    assert kit.storage.item(first).state == DEAD
    assert kit.outcomes.count(("ch", "network_error")) == 3


def test_retry_of_a_dead_webhook_is_one_attempt_and_deletes_on_success():
    kit = make({"max-attempts": 1})
    webhook_id = kit.post()
    kit.client.sent[0].respond(500, b"no")
    assert kit.storage.item(webhook_id).state == DEAD

    failed = ensureDeferred(kit.forwarder.retry(webhook_id))
    kit.client.sent[1].respond(502, b"still no")
    result = failed.result
    assert result.as_json() == {
        "success": False,
        "status_code": 502,
        "body": "still no",
        "error": "unexpected status 502: still no",
    }
    item = kit.storage.item(webhook_id)
    assert item.state == DEAD and item.forward_attempts == 2
    kit.clock.advance(10_000)
    assert len(kit.client.sent) == 2

    done = ensureDeferred(kit.forwarder.retry(webhook_id))
    assert kit.client.sent[2].attempt == 3
    kit.client.sent[2].respond(200, b"thanks")
    assert done.result.as_json() == {"success": True, "status_code": 200, "body": "thanks", "error": None}
    assert kit.storage.item(webhook_id) is None
    assert ensureDeferred(kit.forwarder.retry(webhook_id)).result is None


def test_retry_of_a_webhook_in_flight_answers_with_that_attempt():
    kit = make()
    webhook_id = kit.post()
    result = ensureDeferred(kit.forwarder.retry(webhook_id))
    assert len(kit.client.sent) == 1 and not result.called
    kit.client.sent[0].respond(200)
    assert result.result.success and len(kit.client.sent) == 1


def test_pause_holds_deliveries_and_resume_sends_them_in_order():
    kit = make()
    kit.storage.set_paused("ch", True)
    kit.forwarder.set_paused(True)
    kit.post(b"[1]")
    kit.post(b"[2]")
    kit.clock.advance(3600)
    assert kit.client.sent == []
    kit.storage.set_paused("ch", False)
    kit.forwarder.set_paused(False)
    assert [s.body for s in kit.client.sent] == [b"[1]"]
    kit.client.sent[0].respond(200)
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]"]


def test_pause_survives_a_new_forwarder():
    storage = MemoryStorage()
    storage.add("ch")
    storage.set_paused("ch", True)
    kit = make(storage=storage)
    kit.clock.advance(100)
    assert kit.client.sent == []
    kit.forwarder.set_paused(False)
    assert len(kit.client.sent) == 1


def test_strict_receive_order_with_concurrency_one():
    kit = make()
    for n in range(1, 4):
        kit.post(b"[%d]" % n)
    kit.client.waiting()[0].respond(500)
    kit.clock.advance(1)
    kit.client.waiting()[0].fail(ConnectionRefusedError())
    kit.clock.advance(2)
    for _ in range(3):
        [sent] = kit.client.waiting()
        sent.respond(200)
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[1]", b"[1]", b"[2]", b"[3]"]
    assert kit.storage.rows == {}


def test_concurrency_keeps_n_in_flight():
    kit = make({"concurrency": 3})
    for n in range(1, 6):
        kit.post(b"[%d]" % n)
    assert [s.body for s in kit.client.waiting()] == [b"[1]", b"[2]", b"[3]"]
    kit.client.sent[1].respond(200)
    assert [s.body for s in kit.client.waiting()] == [b"[1]", b"[3]", b"[4]"]
    # A webhook waiting for its retry keeps its place in the window.
    kit.client.sent[0].respond(500)
    assert [s.body for s in kit.client.waiting()] == [b"[3]", b"[4]"]
    for sent in kit.client.waiting():
        sent.respond(200)
    assert [s.body for s in kit.client.waiting()] == [b"[5]"]
    kit.clock.advance(1)
    assert [(s.body, s.attempt) for s in kit.client.waiting()] == [(b"[5]", 1), (b"[1]", 2)]


class SlowWrites(MemoryStorage):
    """Successes are written when the test says (``commit``), as a group
    commit does some time after the attempt."""

    def __init__(self):
        super().__init__()
        self.writes: list[tuple[Deferred, tuple, dict]] = []
        self.windows = 0

    def forward_succeeded(self, *args, **kwargs):
        d = Deferred()
        self.writes.append((d, args, kwargs))
        return d

    def forward_window(self, *args, **kwargs):
        self.windows += 1
        return super().forward_window(*args, **kwargs)

    def commit(self) -> None:
        writes, self.writes = self.writes, []
        for d, args, kwargs in writes:
            d.callback(super().forward_succeeded(*args, **kwargs).result)

    def fail(self) -> None:
        writes, self.writes = self.writes, []
        for d, _, _ in writes:
            d.errback(RuntimeError("disk I/O error"))


def test_a_fast_success_frees_its_slot_before_it_is_written_and_is_not_sent_again():
    kit = make(storage=SlowWrites())
    for n in range(1, 4):
        kit.post(b"[%d]" % n)
    kit.client.waiting()[0].respond(200)
    kit.client.waiting()[0].respond(200)
    # [1] and [2] are still pending in the storage, [3] is in flight.
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]", b"[3]"]
    assert len(kit.storage.writes) == 2 and len(kit.storage.rows) == 3
    # A read of the queue meanwhile does not take them for pending.
    kit.post(b"[4]")
    kit.client.waiting()[0].respond(200)
    kit.storage.commit()
    kit.client.waiting()[0].respond(200)
    kit.storage.commit()
    kit.clock.advance(5)
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]", b"[3]", b"[4]"]
    assert kit.storage.rows == {} and kit.outcomes == [("ch", "ok")] * 4


def test_a_slow_success_keeps_its_slot_until_it_is_written():
    kit = make(storage=SlowWrites())
    kit.post(b"[1]")
    kit.post(b"[2]")
    kit.clock.advance(FAST_ANSWER)
    kit.client.waiting()[0].respond(200)
    assert [s.body for s in kit.client.sent] == [b"[1]"]
    kit.storage.commit()
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]"]


def test_the_queue_is_read_ahead_not_once_per_attempt():
    kit = make(storage=SlowWrites())
    for n in range(20):
        kit.storage.add("ch", b"[%d]" % n)
    kit.notifier.fire(("ch", "default"))
    for _ in range(20):
        kit.client.waiting()[0].respond(200)
        kit.storage.commit()
    assert [s.body for s in kit.client.sent] == [b"[%d]" % n for n in range(20)]
    assert kit.storage.windows <= 2


def test_a_success_that_cannot_be_written_is_sent_again_in_order_after_a_pause():
    kit = make(storage=SlowWrites())
    for n in range(1, 4):
        kit.post(b"[%d]" % n)
    kit.client.waiting()[0].respond(200)
    kit.storage.fail()
    kit.client.waiting()[0].respond(200)
    kit.storage.commit()
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]"]
    assert ("ch", "internal_error") in kit.outcomes
    kit.clock.advance(ERROR_PAUSE)
    # [2] was written; [1] was not and goes again, before [3].
    kit.client.waiting()[0].respond(200)
    kit.storage.commit()
    kit.client.waiting()[0].respond(200)
    kit.storage.commit()
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]", b"[1]", b"[3]"]
    assert kit.storage.rows == {}


def test_a_target_that_never_answers_times_out():
    kit = make({"timeout-seconds": 2, "interval-seconds": 5})
    webhook_id = kit.post()
    kit.clock.advance(1.9)
    assert kit.storage.item(webhook_id).forward_attempts == 0
    kit.clock.advance(0.1)
    assert kit.client.sent[0].cancelled
    item = kit.storage.item(webhook_id)
    assert item.forward_attempts == 1 and item.last_error == "no complete answer within 2s"
    assert item.next_attempt_at == 7
    assert kit.outcomes == [("ch", "network_error")]


def test_a_huge_body_is_cut_at_the_cap():
    kit = make()
    kit.post()
    kit.client.sent[0].respond(500, b"x" * 1024 * 1024, chunks=1000)
    assert kit.client.sent[0].response.transport.producerState == "stopped"
    item = kit.storage.item(1)
    assert item.forward_attempts == 1 and len(item.last_error) < 300
    done = ensureDeferred(kit.forwarder.retry(1))
    kit.client.sent[1].respond(500, b"y" * 1024 * 1024, chunks=1000)
    assert len(done.result.body) == MAX_BODY_KEPT


def test_expected_status_is_the_only_success():
    kit = make({"expected-status": 202})
    webhook_id = kit.post()
    kit.client.sent[0].respond(200)
    assert kit.storage.item(webhook_id).last_error == "unexpected status 200"
    kit.clock.advance(1)
    kit.client.sent[1].respond(202)
    assert kit.storage.item(webhook_id) is None


def test_re_signs_with_sign_header_and_sign_secret_replacing_the_senders_header():
    kit = make(
        {"sign-header": "X-Hub-Signature-256", "sign-secret": "forward-key", "sign-template": "sha256={{ signature }}"},
        **{"webhook-secret": ["new-secret", "old-secret"], "secret-header": "X-Hub-Signature-256"},
    )
    body = b'{"action": "opened"}'
    kit.post(body, {"content-type": "application/json", "x-hub-signature-256": "sha256=from-the-sender"})
    expected = "sha256=" + hmac.new(b"forward-key", body, hashlib.sha256).hexdigest()
    sent = kit.client.sent[0]
    assert sent.headers.getRawHeaders(b"x-hub-signature-256") == [expected.encode()]


def test_sign_header_needs_its_own_sign_secret():
    # The webhook-secret verifies what comes in; it never signs what goes out.
    with pytest.raises(ConfigError) as error:
        config({"sign-header": "X-Sig"}, **{"webhook-secret": "in", "secret-header": "X-In"})
    assert error.value.errors == [
        "config.yml: channels[0] (ch): forward: key 'sign-secret': is required with sign-header "
        "(the webhook-secret never signs what kwp forwards)"
    ]
    with pytest.raises(ConfigError, match="forward: key 'url'"):
        config({"url": "ftp://nope"})


def test_headers_that_are_never_passed_on():
    kit = make(**{"webhook-secret": "tg-secret", "secret-header": "X-Telegram-Bot-Api-Secret-Token"})
    never = {
        "cookie": "session=1",
        "authorization": "Bearer inside-token",
        "forwarded": "for=10.0.0.1",
        "x-forwarded-for": "10.0.0.1",
        "x-forwarded-host": "kwp.example",
        "x-forwarded-proto": "https",
        "x-real-ip": "10.0.0.1",
        "x-http-method-override": "DELETE",
        "x-method-override": "DELETE",
        "x-http-method": "DELETE",
        "expect": "100-continue",
        "content-encoding": "gzip",
    }
    kit.post(b"{}", {"content-type": "application/json", "x-telegram-bot-api-secret-token": "tg-secret", **never})
    sent = kit.client.sent[0]
    assert {name: sent.header(name) for name in never} == dict.fromkeys(never)
    # A plain channel's secret header is passed on: the app behind may check it.
    assert sent.header("x-telegram-bot-api-secret-token") == "tg-secret"
    assert sent.header("content-type") == "application/json"


def test_headers_allowlist_passes_only_those_and_kwps_own():
    kit = make({"headers": ["X-GitHub-Event", "x-github-delivery", "Cookie-Free"], "sign-header": "X-Sig",
                "sign-secret": "k"})
    kit.post(b"{}", {"content-type": "application/json", "x-github-event": "push", "x-github-delivery": "d-1",
                     "x-github-hook-id": "7", "user-agent": "GitHub-Hookshot"})
    sent = kit.client.sent[0]
    names = sorted(name.decode().lower() for name, _ in sent.headers.getAllRawHeaders())
    assert names == ["content-type", "x-github-delivery", "x-github-event", "x-kwp-attempt", "x-kwp-delivery-id",
                     "x-sig"]


def test_headers_allowlist_cannot_name_a_header_that_is_never_passed_on():
    with pytest.raises(ConfigError, match=r"forward: key 'headers': 'x-forwarded-for' is never passed on"):
        config({"headers": ["X-GitHub-Event", "X-Forwarded-For"]})


def test_a_stored_header_that_is_not_valid_http_is_left_out_and_the_rest_goes():
    kit = make()
    webhook_id = kit.post(b"{}", {"content-type": "application/json", "x bad name": "1", "x-control": "a\x01b",
                                  "x-wide": "\u20ac", "x-fine": "caf\xe9\tok"})
    sent = kit.client.sent[0]
    names = {name.decode().lower() for name, _ in sent.headers.getAllRawHeaders()}
    assert names == {"content-type", "x-fine", "x-kwp-attempt", "x-kwp-delivery-id"}
    assert sent.headers.getRawHeaders(b"x-fine") == [b"caf\xe9\tok"]
    sent.respond(200)
    assert kit.storage.item(webhook_id) is None


WHSEC = "whsec_" + base64.b64encode(b"forward signing key 0123456").decode()


def test_standard_webhooks_signs_each_attempt_afresh():
    # The first attempt is made at the receive; the retry 400 s later, when a
    # signature made at the receive is refused by the official library.
    received_at = time.time() - 400
    kit = make({"sign-scheme": "standard-webhooks", "sign-secret": WHSEC, "interval-seconds": 400})
    kit.clock.advance(received_at)
    body = b'{"type": "invoice.paid", "n": 1.50}'
    kit.post(body, {"content-type": "application/json", "webhook-id": "msg_sender", "webhook-timestamp": "1",
                    "webhook-signature": "v1,c2VuZGVy", "svix-id": "msg_s", "svix-timestamp": "1",
                    "svix-signature": "v1,c3ZpeA=="})
    kit.client.sent[0].respond(500)
    kit.clock.advance(400)
    first, second = kit.client.sent
    wh = Webhook(WHSEC)
    with pytest.raises(WebhookVerificationError, match="too old"):
        wh.verify(body, single_headers(first))
    assert wh.verify(body, single_headers(second)) == {"type": "invoice.paid", "n": 1.5}
    for sent in (first, second):
        headers = single_headers(sent)
        assert headers["webhook-id"] == headers["x-kwp-delivery-id"] == "ch-1"
        assert not {"svix-id", "svix-timestamp", "svix-signature"} & headers.keys()
    assert int(single_headers(second)["webhook-timestamp"]) == int(received_at + 400)


def single_headers(sent) -> dict[str, str]:
    """The headers of a request as a dict; fails when one is sent twice."""
    headers = {}
    for name, values in sent.headers.getAllRawHeaders():
        assert len(values) == 1, (name, values)
        headers[name.decode().lower()] = values[0].decode("latin-1")
    return headers


@pytest.mark.parametrize(
    "forward, error",
    [
        ({}, "key 'sign-secret': is required with sign-scheme 'standard-webhooks'"),
        ({"sign-secret": "plain-text"}, "key 'sign-secret': must be a Standard Webhooks secret"),
        ({"sign-secret": "whsec_not base64!"}, "key 'sign-secret': must be a Standard Webhooks secret"),
        ({"sign-secret": WHSEC, "sign-header": "X-Sig"}, "key 'sign-header': is not used with sign-scheme"),
        ({"sign-secret": WHSEC, "sign-template": "{{ signature }}"}, "key 'sign-template': is not used"),
    ],
)
def test_standard_webhooks_config_errors(forward, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        config({"sign-scheme": "standard-webhooks", **forward})


def test_stop_waits_for_attempts_in_flight_then_cancels_them():
    kit = make()
    webhook_id = kit.post()
    stopped = kit.forwarder.stopService()
    kit.post()
    assert len(kit.client.sent) == 1 and not stopped.called
    kit.clock.advance(4.9)
    assert not stopped.called
    kit.clock.advance(0.1)
    assert stopped.called and kit.client.sent[0].cancelled
    assert kit.storage.item(webhook_id).forward_attempts == 0


def test_stop_returns_once_the_attempt_in_flight_ends():
    kit = make()
    kit.post()
    stopped = kit.forwarder.stopService()
    kit.client.sent[0].respond(200)
    assert stopped.called and kit.storage.rows == {}


def test_forwarders_update_adds_replaces_and_removes():
    clock = Clock()
    storage = MemoryStorage()
    client = FakeClient(clock)
    first = config()
    forwarders = Forwarders(first, storage, Notifier(), clock, client)
    forwarders.startService()
    original = forwarders.get("ch")
    assert original.running

    ensureDeferred(forwarders.update(first))
    assert forwarders.get("ch") is original

    changed = config({"interval-seconds": 7})
    ensureDeferred(forwarders.update(changed))
    replacement = forwarders.get("ch")
    assert replacement is not original and not original.running and replacement.running
    assert replacement.forward.interval_seconds == 7

    ensureDeferred(forwarders.update(parse_config({"channels": [{"name": "ch", "token": "t"}]})))
    assert forwarders.get("ch") is None and not replacement.running
    ensureDeferred(forwarders.stopService())


def test_queue_encodes_status_and_items():
    clock = Clock()
    storage = MemoryStorage()
    forwarders = Forwarders(config({"max-attempts": 1}), storage, Notifier(), clock, FakeClient(clock, [500]))
    storage.add("ch", b'{"a": [1.50]}', {"x-a": "1"}, at=12.7)
    forwarders.startService()
    body = json.loads(ensureDeferred(forwarders.queue("ch", "default", 100, 0)).result)
    assert body == {
        "status": {
            "paused": False,
            "queue_size": 1,
            "last_success_at": None,
            "last_error_at": 0,
            "last_error_message": "unexpected status 500",
        },
        "items": [
            {
                "id": 1,
                "headers": {"x-a": "1"},
                "payload": {"a": [1.5]},
                "received_at": 12,
                "forward_attempts": 1,
                "last_attempt_at": 0,
                "last_attempt_error": "unexpected status 500",
                "next_attempt_at": None,
                "state": "dead",
            }
        ],
    }
    assert ensureDeferred(forwarders.clear("ch", "default")).result == 1
    ensureDeferred(forwarders.stopService())


def test_make_service_wires_forwarders_between_storage_and_listeners(tmp_path):
    from kwp.tap import Options, makeService
    from tests.support import write_config

    path = write_config(tmp_path / "config.yml", {"channels": [{"name": "ch", "token": "t", "forward": {"url": URL}}]})
    options = Options(environ={})
    options.parseOptions(["-c", str(path), "-d", str(tmp_path / "kwp.db"), "-l", "tcp:0:interface=127.0.0.1"])
    service = makeService(options, reactor=Clock())
    forwarders = service.app.forwarders
    children = list(service)
    assert children.index(service.app.storage) < children.index(forwarders) < children.index(service.listeners[0])
    assert forwarders.get("ch").forward.url == URL

    for hook in service.on_reload:
        hook(config({"url": "http://elsewhere.invalid/"}))
    assert forwarders.get("ch").forward.url == "http://elsewhere.invalid/"


def test_each_push_consumer_has_its_own_forwarder_pause_and_log():
    clock = Clock()
    storage = MemoryStorage()
    client = FakeClient(clock)
    notifier = Notifier()
    consumers = [
        {"name": "ci", "forward": {"url": URL, "interval-seconds": 1}},
        {"name": "chat", "forward": {"url": URL + "/chat", "interval-seconds": 1}},
        {"name": "pull", "token": "pull-token"},
    ]
    cfg = parse_config({"channels": [{"name": "ch", "token": "t", "consumers": consumers}]})
    outcomes = []
    forwarders = Forwarders(cfg, storage, notifier, clock, client, report=lambda *o: outcomes.append(o[:3]))
    forwarders.startService()
    assert sorted(f.name for f in forwarders) == ["ch/chat", "ch/ci"]
    ensureDeferred(forwarders.set_paused("ch", "chat", True))
    for consumer in ("ci", "chat"):
        storage.add("ch", b'{"n": 1}', consumer=consumer)
        notifier.fire(("ch", consumer))
    [sent] = client.sent
    assert sent.url == URL and sent.header("x-kwp-delivery-id") == "ch.ci-1"
    clock.advance(0.25)
    sent.respond(502, b"bad gateway " * 200)
    assert outcomes == [("ch", "ci", "unexpected_status")]
    [(webhook_id, consumer, attempt)] = storage.attempts
    assert (webhook_id, consumer, attempt.status_code, attempt.duration_ms) == (1, "ci", 502, 250.0)
    assert attempt.error.startswith("unexpected status 502") and attempt.response_excerpt.startswith("bad gateway")
    ensureDeferred(forwarders.set_paused("ch", "chat", False))
    assert [s.url for s in client.sent] == [URL, URL + "/chat"]
    assert client.sent[1].header("x-kwp-delivery-id") == "ch.chat-2"
    ensureDeferred(forwarders.stopService())


# --- the forwarding lease (several nodes on one database) -------------------------


def test_a_forwarder_without_the_lease_sends_nothing_until_the_holder_s_lease_ends():
    storage = MemoryStorage()
    storage.leases["ch", "default"] = ["other-node", 1, 10.0]
    kit = make(storage=storage)
    kit.post()
    kit.clock.advance(9.5)
    assert kit.client.sent == []
    # Tried again each second at most: taken over within a second of the end.
    kit.clock.advance(1.0)
    [sent] = kit.client.sent
    assert sent.at <= 11.0 and storage.leases["ch", "default"][:2] == ["this-node", 2]


def test_a_forwarder_renews_its_lease_and_gives_it_up_when_it_stops():
    kit = make()
    lease = kit.storage.leases["ch", "default"]
    assert lease == ["this-node", 1, 10.0]
    kit.clock.advance(10 / 3)
    assert lease[2] == pytest.approx(10 / 3 + 10)
    kit.forwarder.stopService()
    assert lease[0] is None


def test_an_outcome_after_the_lease_went_to_another_node_is_not_written_and_sending_stops():
    kit = make()
    first = kit.post()
    [sent] = kit.client.sent
    # Meanwhile another node took the lease over (this one was stuck).
    kit.storage.leases["ch", "default"] = ["other-node", 2, 100.0]
    sent.respond(200)
    assert kit.storage.item(first) is not None and kit.storage.attempts == []
    kit.post()
    kit.clock.advance(5)
    assert len(kit.client.sent) == 1


class HeldAnswers(MemoryStorage):
    """Answers renew_lease and queue_state as they stand when asked, but
    only when the test lets them through."""

    def __init__(self):
        super().__init__()
        self.held: list[tuple[Deferred, object]] = []

    def _held(self, answer: Deferred) -> Deferred:
        later = Deferred()
        answer.addCallback(lambda result: self.held.append((later, result)))
        return later

    def renew_lease(self, *args, **kwargs):
        return self._held(super().renew_lease(*args, **kwargs))

    def queue_state(self, *args, **kwargs):
        return self._held(super().queue_state(*args, **kwargs))

    def answer(self, held=None) -> None:
        held = self.held if held is None else held
        while held:
            later, result = held.pop(0)
            later.callback(result)


@pytest.mark.parametrize("read", ["renewal", "queue_state"])
def test_a_pause_is_not_undone_by_a_read_that_began_before_it(read):
    storage = HeldAnswers()
    kit = make(storage=storage)
    storage.answer()
    if read == "renewal":
        kit.clock.advance(10 / 3)
    else:
        kit.forwarder.queue_changed()
    stale, storage.held = storage.held, []
    assert len(stale) == 1
    storage.set_paused("ch", True)
    kit.forwarder.set_paused(True)
    storage.answer(stale)
    kit.post()
    for _ in range(20):
        storage.answer()
        kit.clock.advance(1)
    assert kit.client.sent == []


def test_a_pause_made_on_another_node_stops_the_forwarder_when_heard_or_at_the_next_renewal():
    heard = make()
    heard.storage.states["ch", "default"] = QueueState(paused=True)
    heard.forwarder.queue_changed()
    heard.post()
    assert heard.client.sent == []
    renewed = make()
    renewed.storage.states["ch", "default"] = QueueState(paused=True)
    renewed.clock.advance(10 / 3)
    renewed.post()
    assert renewed.client.sent == []


def test_a_hand_over_asked_while_the_window_is_read_starts_nothing_more_and_gives_the_lease_up():
    class HeldWindow(MemoryStorage):
        def __init__(self):
            super().__init__()
            self.held = []

        def forward_window(self, *args, **kwargs):
            later = Deferred()
            super().forward_window(*args, **kwargs).addCallback(lambda items: self.held.append((later, items)))
            return later

    storage = HeldWindow()
    kit = make(storage=storage)
    [(first, empty)] = storage.held
    storage.held.clear()
    first.callback(empty)
    kit.post()
    [(window, items)] = storage.held
    assert len(items) == 1
    kit.forwarder.lease_wanted()
    window.callback(items)
    assert kit.client.sent == []
    assert storage.leases["ch", "default"][0] is None


def test_on_a_database_that_several_nodes_share_a_fast_success_keeps_its_slot_until_it_is_written():
    storage = SlowWrites()
    storage.shared = True
    kit = make(storage=storage)
    kit.post(b"[1]")
    kit.post(b"[2]")
    kit.client.waiting()[0].respond(200)
    assert [s.body for s in kit.client.sent] == [b"[1]"]
    kit.storage.commit()
    assert [s.body for s in kit.client.sent] == [b"[1]", b"[2]"]
