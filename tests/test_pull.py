"""Pull semantics on a task.Clock: long-poll time-outs and wake-ups, lease
expiry, backpressure; and the storage semantics the fake shares with SQLite."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

from kwp.notify import Notifier
from kwp.pull import PAGE, Puller, PullQuery
from kwp.storage import NewWebhook
from kwp.storage.sqlite import SQLiteStorage
from tests.fakes import FakeRequest, MemoryStorage


# The queue of the implicit consumer of channel "c".
QUEUE = ("c", "default")


def webhook(n, channel="c", received_at=1000.0):
    return NewWebhook(channel, "{}", b'{"n":%d}' % n, received_at)


class Pull:
    """A Puller over MemoryStorage on a Clock, and one GET at a time."""

    def __init__(self):
        self.clock = task.Clock()
        self.storage = MemoryStorage()
        self.notifier = Notifier()
        self.puller = Puller(self.storage, self.notifier, self.clock)

    def post(self, n, channel="c"):
        self.storage.insert(webhook(n, channel))
        self.notifier.fire((channel, "default"))

    def get(self, request=None, channel="c", **query):
        request = request or FakeRequest()
        d = ensureDeferred(self.puller.take(request, channel, "default", PullQuery(**query)))
        d.addCallback(lambda closing: request.write(closing))
        return request, d

    def items(self, request):
        return json.loads(request.body())


def test_long_poll_times_out_exactly_at_wait_with_an_empty_array():
    pull = Pull()
    request, d = pull.get(wait=10)
    assert pull.notifier.waiting(QUEUE) == 1
    pull.clock.advance(9.999)
    assert not d.called
    pull.clock.advance(0.001)
    assert d.called and pull.items(request) == []
    assert pull.notifier.waiting(QUEUE) == 0 and pull.clock.getDelayedCalls() == []


def test_long_poll_answers_at_once_when_a_webhook_arrives():
    pull = Pull()
    request, d = pull.get(wait=30)
    pull.clock.advance(5)
    pull.post(1, channel="other")
    assert not d.called
    pull.post(7)
    assert d.called
    assert [i["payload"] for i in pull.items(request)] == [{"n": 7}]
    assert pull.clock.getDelayedCalls() == [] and pull.notifier.waiting(QUEUE) == 0


def test_a_cancelled_long_poll_frees_its_waiter_and_timer():
    pull = Pull()
    request, d = pull.get(wait=60)
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert pull.notifier.waiting(QUEUE) == 0
    assert pull.clock.getDelayedCalls() == []


def test_without_wait_nothing_waits():
    pull = Pull()
    request, d = pull.get()
    assert d.called and pull.items(request) == []
    assert pull.notifier.waiting(QUEUE) == 0


def test_unleased_items_are_deleted_only_when_the_response_was_written():
    pull = Pull()
    pull.post(1)
    request, _ = pull.get()
    assert [i["id"] for i in pull.items(request)] == [1]
    assert pull.storage.rows[1, "default"].claim is not None
    request.finish()
    assert pull.storage.rows == {}


def test_a_dropped_response_gives_its_items_back_undelivered():
    pull = Pull()
    pull.post(1)
    request, _ = pull.get()
    request.lose()
    assert pull.storage.rows[1, "default"].claim is None and pull.storage.rows[1, "default"].deliveries == 0
    again, _ = pull.get()
    assert [i["id"] for i in pull.items(again)] == [1]


def test_an_unacked_lease_comes_back_exactly_when_it_ends():
    pull = Pull()
    pull.post(1)
    first, _ = pull.get(lease=30)
    first.finish()
    assert [(i["id"], i["deliveries"]) for i in pull.items(first)] == [(1, 1)]
    pull.clock.advance(29.9)
    hidden, _ = pull.get(lease=30)
    assert pull.items(hidden) == []
    pull.clock.advance(0.1)
    back, _ = pull.get(lease=30)
    assert [(i["id"], i["deliveries"]) for i in pull.items(back)] == [(1, 2)]


def test_a_lease_running_out_wakes_a_long_poll():
    pull = Pull()
    pull.post(1)
    first, _ = pull.get(lease=20)
    first.finish()
    waiting, d = pull.get(wait=60, lease=20)
    pull.clock.advance(19)
    assert not d.called
    pull.clock.advance(1)
    assert d.called
    assert [(i["id"], i["deliveries"]) for i in pull.items(waiting)] == [(1, 2)]


def test_acked_items_do_not_come_back():
    pull = Pull()
    for n in range(3):
        pull.post(n)
    leased, _ = pull.get(lease=10)
    leased.finish()
    assert pull.storage.ack("c", [1, 3, 3, 99], 0.0).result == 2
    pull.clock.advance(10)
    again, _ = pull.get(lease=10)
    assert [i["id"] for i in pull.items(again)] == [2]


def test_the_stream_waits_while_the_transport_is_full():
    pull = Pull()
    for n in range(PAGE * 3):
        pull.post(n)
    request, d = pull.get(request=FakeRequest(pause_after_write=True))
    assert len(request.written) == 1 and not d.called
    request.producer.resumeProducing()
    assert len(request.written) == 2 and not d.called
    request.producer.resumeProducing()
    request.producer.resumeProducing()
    assert d.called
    assert [i["payload"]["n"] for i in pull.items(request)] == list(range(PAGE * 3))


def test_limit_and_raw_bodies():
    pull = Pull()
    for n in range(5):
        pull.post(n)
    request, _ = pull.get(limit=2, raw=True)
    items = pull.items(request)
    assert [i["body"] for i in items] == ["eyJuIjowfQ==", "eyJuIjoxfQ=="]
    assert all("payload" not in i for i in items)


def test_a_long_poll_answers_at_once_when_the_process_stops():
    pull = Pull()
    request, d = pull.get(wait=60)
    pull.notifier.close()
    assert d.called and pull.items(request) == []


# Wake-ups: one webhook, one long-poll.


class CountingStorage(MemoryStorage):
    """MemoryStorage that counts claims, and holds them back while ``hold``
    is set (released by ``resolve``, which claims at that moment)."""

    def __init__(self):
        super().__init__()
        self.claims = 0
        self.hold = False
        self.held = []

    def claim(self, channel, claim_id, limit, now, lease_seconds=None, *, consumer="default"):
        self.claims += 1
        if not self.hold:
            return super().claim(channel, claim_id, limit, now, lease_seconds, consumer=consumer)
        d = Deferred()
        self.held.append((d, (channel, claim_id, limit, now, lease_seconds), consumer))
        return d

    def resolve(self):
        held, self.held = self.held, []
        for d, args, consumer in held:
            d.callback(super().claim(*args, consumer=consumer).result)


def counting_pull():
    pull = Pull()
    pull.storage = CountingStorage()
    pull.puller = Puller(pull.storage, pull.notifier, pull.clock)
    return pull


def test_a_webhook_wakes_one_long_poll_whatever_the_number_waiting():
    pull = counting_pull()
    polls = [pull.get(wait=30) for _ in range(1000)]
    assert pull.notifier.waiting(QUEUE) == 1000 and pull.storage.claims == 1000
    pull.post(1)
    assert pull.storage.claims == 1001
    answered = [(request, d) for request, d in polls if d.called]
    assert [pull.items(request)[0]["id"] for request, _ in answered] == [1]
    # The oldest waiter got it.
    assert answered[0][1] is polls[0][1]
    assert pull.notifier.waiting(QUEUE) == 999
    pull.post(2)
    pull.post(3)
    assert pull.storage.claims == 1003 and pull.notifier.waiting(QUEUE) == 997


def test_a_long_poll_woken_for_a_webhook_another_took_waits_again_within_its_deadline():
    pull = counting_pull()
    request, d = pull.get(wait=30)
    pull.clock.advance(10)
    pull.storage.insert(webhook(1))
    taker, _ = pull.get()
    assert [i["id"] for i in pull.items(taker)] == [1]
    pull.notifier.fire(QUEUE)
    assert not d.called and pull.notifier.waiting(QUEUE) == 1
    pull.clock.advance(10)
    pull.post(2)
    assert d.called and [i["id"] for i in pull.items(request)] == [2]

    late, d = pull.get(wait=30)
    pull.clock.advance(29)
    pull.notifier.fire(QUEUE)
    assert not d.called
    pull.clock.advance(1)
    assert d.called and pull.items(late) == []
    assert pull.notifier.waiting(QUEUE) == 0 and pull.clock.getDelayedCalls() == []


def test_a_wake_that_came_during_a_claim_and_was_not_used_goes_to_the_next_waiter():
    pull = counting_pull()
    pull.storage.hold = True
    first, d1 = pull.get(wait=30, limit=1)
    pull.storage.hold = False
    second, d2 = pull.get(wait=30)
    assert not d2.called and pull.notifier.waiting(QUEUE) == 2
    # A webhook that reached the queue without a wake (another node, say),
    # then one with a wake, which goes to the oldest waiter, whose claim is
    # still running and takes the first one only.
    pull.storage.insert(webhook(1))
    pull.post(2)
    pull.storage.resolve()
    assert [i["id"] for i in pull.items(first)] == [1]
    assert d2.called and [i["id"] for i in pull.items(second)] == [2]


def test_leases_running_out_wake_as_many_long_polls():
    pull = counting_pull()
    for n in (1, 2):
        pull.post(n)
    leased, _ = pull.get(lease=20)
    leased.finish()
    polls = [pull.get(wait=60, lease=20, limit=1) for _ in range(3)]
    claims = pull.storage.claims
    pull.clock.advance(20)
    assert pull.storage.claims == claims + 2
    assert [[i["id"] for i in pull.items(request)] for request, d in polls if d.called] == [[1], [2]]
    assert pull.notifier.waiting(QUEUE) == 1


def test_a_dropped_pull_wakes_long_polls_for_what_it_gives_back():
    pull = counting_pull()
    pull.post(1)
    dropped, _ = pull.get()
    waiting, d = pull.get(wait=30)
    assert not d.called
    dropped.lose()
    assert d.called and [(i["id"], i["payload"]) for i in pull.items(waiting)] == [(1, {"n": 1})]


def test_long_polls_are_capped_per_token():
    pull = counting_pull()
    take = pull.puller.take

    def poll(token, **query):
        request = FakeRequest()
        d = ensureDeferred(take(request, "c", "default", PullQuery(**query), token, 2))
        d.addCallback(request.write)
        return request, d

    first, d1 = poll("a", wait=30)
    poll("a", wait=30)
    refused = poll("a", wait=30)[1]
    error = refused.result.value
    refused.addErrback(lambda f: None)
    assert (error.status, error.code, error.headers) == (429, "too_many_requests", {"Retry-After": "5"})
    assert not poll("b", wait=30)[1].called
    assert poll("a")[1].called
    pull.post(1)
    assert d1.called and [i["id"] for i in pull.items(first)] == [1]
    assert not poll("a", wait=30)[1].called


def test_the_notifier_wakes_every_watcher_and_one_waiter_per_item():
    notifier = Notifier()
    key = ("github", "ci")
    watcher = notifier.wait(key)
    takers = [notifier.wait_for_item(key) for _ in range(5)]
    takers[1].addErrback(lambda f: f.trap(CancelledError))
    takers[1].cancel()
    assert notifier.waiting(key) == 5
    notifier.fire(key, 2)
    assert watcher.called
    assert [t.called for t in takers] == [True, True, True, False, False]
    assert notifier.waiting(key) == 2
    notifier.fire(("github", "chat"))
    assert notifier.waiting(key) == 2
    notifier.close()
    assert all(t.called for t in takers) and notifier.waiting(key) == 0


# The storage semantics the Puller relies on, for the fake and for SQLite.


@pytest.fixture(params=["memory", "sqlite"])
def storage(request, tmp_path):
    if request.param == "memory":
        yield MemoryStorage()
        return
    sqlite = SQLiteStorage(str(tmp_path / "kwp.db"), reactor)
    sqlite.prepare()
    sqlite.startService()
    yield sqlite
    sqlite.stopService()


async def _fill(storage, n, channel="c"):
    return [await storage.insert(webhook(i, channel)) for i in range(n)]


async def _ids(d):
    return [w.id for w in await d]


@pytest_twisted.ensureDeferred
async def test_storage_claims_hand_each_row_to_one_claim(storage):
    ids = await _fill(storage, 5)
    assert await _ids(storage.claim("c", "a", 2, 0.0)) == ids[:2]
    assert await _ids(storage.claim("c", "b", 10, 0.0, 5)) == ids[2:]
    assert await storage.claim("c", "d", 10, 4.9, 5) == []
    await storage.release_claim("a")
    back = await storage.claim("c", "d", 10, 5.0, 5)
    assert [(w.id, w.deliveries) for w in back] == [(i, 1) for i in ids[:2]] + [(i, 2) for i in ids[2:]]


@pytest_twisted.ensureDeferred
async def test_storage_finish_deletes_only_its_own_claim(storage):
    ids = await _fill(storage, 3)
    await storage.claim("c", "a", 1, 0.0)
    await storage.claim("c", "b", 1, 0.0)
    await storage.finish_claim("a", 0.0)
    assert await _ids(storage.list("c", 10, 0)) == ids[1:]


@pytest_twisted.ensureDeferred
async def test_storage_ack_deletes_only_handed_out_rows_of_the_channel(storage):
    ids = await _fill(storage, 3)
    other = await _fill(storage, 1, channel="x")
    await storage.claim("c", "a", 2, 0.0, 30)
    await storage.claim("x", "b", 1, 0.0, 30)
    assert await storage.ack("c", [ids[0], ids[0], ids[2], other[0], 10**9], 0.0) == 1
    assert await _ids(storage.list("c", 10, 0)) == ids[1:]
    assert await _ids(storage.list("x", 10, 0)) == other


@pytest_twisted.ensureDeferred
async def test_storage_list_and_delete(storage):
    ids = await _fill(storage, 4)
    assert await _ids(storage.list("c", 2, ids[0])) == ids[1:3]
    assert await storage.delete("c", ids[1], 0.0) is True
    assert await storage.delete("c", ids[1], 0.0) is False
    assert await storage.delete("other", ids[2], 0.0) is False
    assert await _ids(storage.list("c", 10, 0)) == [ids[0], ids[2], ids[3]]


def test_a_client_that_leaves_in_the_middle_of_an_answer_ends_the_pull_with_its_cancel_alone():
    pull = Pull()
    for n in range(PAGE * 3):
        pull.post(n)
    request, d = pull.get(request=FakeRequest(pause_after_write=True))
    assert len(request.written) == 1 and not d.called
    request.lose()
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert [f.type for f in failures] == [CancelledError]
    assert all(row.claim is None for row in pull.storage.rows.values()) and len(pull.storage.rows) == PAGE * 3
