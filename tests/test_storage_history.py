"""The history in storage: what stays after delivery, retention, replay,
the delivery log and purge."""

from __future__ import annotations

import pytest_twisted

from kwp.storage import Attempt, EventQuery, NewWebhook, Retention, Route
from tests.test_storage import routed, storage  # noqa: F401 (fixture)


def attempt(at, status=500, error="unexpected status 500"):
    return Attempt(at, status, error, 12.5, "x" * 2000)


@pytest_twisted.ensureDeferred
async def test_a_webhook_is_history_once_every_consumer_is_done_and_shows_each_delivery(storage):
    await storage.insert(routed(1, "ci", "chat"))
    await storage.claim("a", "c", 1, 2000.0, None, consumer="ci")
    await storage.finish_claim("c", 2001.0)
    [event] = await storage.events("a", EventQuery(), 10)
    assert event.state == "pending"
    assert [(d.consumer, d.state, d.handouts, d.taken_at, d.delivered_at) for d in event.deliveries] == [
        ("chat", "pending", 0, None, None),
        ("ci", "delivered", 1, 2000.0, 2001.0),
    ]
    await storage.delete("a", 1, 2002.0, consumer="chat")
    [event] = await storage.events("a", EventQuery(), 10)
    assert event.state == "delivered"
    assert [d.state for d in event.deliveries] == ["deleted", "delivered"]
    assert [e.id for e in await storage.events("a", EventQuery(state="delivered", consumer="chat"), 10)] == [1]


@pytest_twisted.ensureDeferred
async def test_retention_zero_keeps_nothing_once_delivered(storage):
    storage.retention = Retention(channels={"a": (0, 100)})
    await storage.insert(routed(1, "ci", "chat"))
    await storage.claim("a", "c", 1, 2000.0, None, consumer="ci")
    await storage.finish_claim("c", 2001.0)
    assert len(await storage.events("a", EventQuery(), 10)) == 1
    await storage.clear("a", 2002.0, consumer="chat")
    assert await storage.events("a", EventQuery(), 10) == []
    assert await storage.event("a", 1) is None


@pytest_twisted.ensureDeferred
async def test_filtered_webhooks_are_history_only(storage):
    await storage.insert(routed(1))
    await storage.insert(routed(2, "ci"))
    assert [e.id for e in await storage.events("a", EventQuery(state="filtered"), 10)] == [1]
    assert [e.id for e in await storage.events("a", EventQuery(state="filtered", consumer="ci"), 10)] == [1]
    assert [e.id for e in await storage.events("a", EventQuery(state="pending"), 10)] == [2]
    assert [e.id for e in await storage.events_after("a", 0, 10, "ci")] == [2]
    assert [e.id for e in await storage.events_after("a", 0, 10)] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_events_page_newest_first_and_select_by_time_and_consumer(storage):
    for i in range(6):
        await storage.insert(routed(i, "ci" if i % 2 else "chat"))
    assert [e.id for e in await storage.events("a", EventQuery(), 3)] == [6, 5, 4]
    assert [e.id for e in await storage.events("a", EventQuery(before=4), 3)] == [3, 2, 1]
    assert [e.id for e in await storage.events("a", EventQuery(since=1001.0, until=1003.0), 10)] == [4, 3, 2]
    assert [e.id for e in await storage.events("a", EventQuery(consumer="ci"), 10)] == [6, 4, 2]
    assert await storage.events("b", EventQuery(), 10) == []


@pytest_twisted.ensureDeferred
async def test_replay_queues_at_the_tail_as_a_new_delivery(storage):
    for i in range(3):
        await storage.insert(routed(i, "ci"))
    await storage.forward_failed("a", 1, attempt(2000.0), None, "dead", consumer="ci")
    taken = await storage.claim("a", "c", 1, 2001.0, None, consumer="ci")
    assert [r.id for r in taken] == [2]
    await storage.finish_claim("c", 2002.0)
    results = await storage.replay("a", [2, 1, 3, 99], None, 2003.0)
    assert results == [(1, ["ci"], []), (2, ["ci"], []), (3, [], ["ci"])]
    assert [r.id for r in await storage.list("a", 10, consumer="ci")] == [3, 1, 2]
    [item] = [i for i in (await storage.queue("a", 10, consumer="ci"))[2] if i.id == 1]
    assert (item.state, item.forward_attempts, item.last_error) == ("pending", 0, None)
    # The log of the earlier delivery stays.
    assert [a.status_code for a in (await storage.event("a", 1)).deliveries[0].log] == [500]
    assert await storage.replay("a", [3], ["chat"], 2004.0) == [(3, ["chat"], [])]
    assert [r.id for r in await storage.list("a", 10, consumer="chat")] == [3]
    # Listing after a replayed webhook goes on from its new place.
    assert [r.id for r in await storage.list("a", 10, after=1, consumer="ci")] == [2]


@pytest_twisted.ensureDeferred
async def test_replay_of_dead_letters_only_takes_dead_deliveries(storage):
    await storage.insert(routed(1, "ci", "chat"))
    await storage.forward_failed("a", 1, attempt(2000.0), None, "dead", consumer="chat")
    await storage.ack("a", [r.id for r in await storage.claim("a", "c", 1, 2000.0, 5, consumer="ci")], 2001.0, consumer="ci")
    assert await storage.replay("a", [1], None, 2002.0, "dead") == [(1, ["chat"], [])]
    assert await storage.list("a", 10, consumer="ci") == []


@pytest_twisted.ensureDeferred
async def test_the_delivery_log_keeps_the_last_20_attempts_with_an_excerpt(storage):
    await storage.insert(routed(1, "push"))
    for n in range(25):
        await storage.forward_failed("a", 1, attempt(2000.0 + n, 500 + n), 2100.0 + n, "pending", consumer="push")
    await storage.forward_succeeded("a", 1, Attempt(2050.0, 200, None, 3.0, "ok"), consumer="push")
    event = await storage.event("a", 1)
    [delivery] = event.deliveries
    assert (delivery.state, delivery.attempts, delivery.last_status, delivery.delivered_at) == (
        "delivered",
        26,
        200,
        2050.0,
    )
    assert [a.status_code for a in delivery.log] == [*range(506, 525), 200]
    assert len(delivery.log[0].response_excerpt) == 1024
    assert (await storage.queue_state("a", consumer="push")).last_success_at == 2050.0


@pytest_twisted.ensureDeferred
async def test_pruning_follows_retention_and_history_max_and_never_takes_open_deliveries(storage):
    storage.retention = Retention(seconds=100, history_max=3, channels={"b": (10, 100)})
    for i in range(6):
        await storage.insert(routed(i, "ci"))
    await storage.insert(routed(9, "ci", channel="b"))
    done = await storage.claim("a", "c", 5, 2000.0, None, consumer="ci")
    await storage.finish_claim("c", 2000.0)
    await storage.forward_failed("a", 6, attempt(2000.0), None, "dead", consumer="ci")
    await storage.ack("b", [r.id for r in await storage.claim("b", "d", 1, 2000.0, 5, consumer="ci")], 2000.0, consumer="ci")
    assert [r.id for r in done] == [1, 2, 3, 4, 5]
    # history-max 3 on channel a: the two oldest done go; b is younger than 10s.
    assert await storage.prune(2005.0, 100) == 2
    assert [e.id for e in await storage.events("a", EventQuery(), 10)] == [6, 5, 4, 3]
    assert await storage.prune(2011.0, 100) == 1
    assert await storage.events("b", EventQuery(), 10) == []
    # Small batches: one at a time.
    assert await storage.prune(2101.0, 1) == 1
    assert await storage.prune(2101.0, 100) == 2
    # The dead letter stays.
    assert [e.id for e in await storage.events("a", EventQuery(), 10)] == [6]


@pytest_twisted.ensureDeferred
async def test_purge_takes_the_body_the_queues_and_the_log(storage):
    await storage.insert(routed(1, "ci", "chat"))
    await storage.forward_failed("a", 1, attempt(2000.0), 2100.0, "pending", consumer="chat")
    assert not await storage.purge("b", 1)
    assert await storage.purge("a", 1)
    assert await storage.event("a", 1) is None
    assert await storage.list("a", 10, consumer="ci") == []
    assert await storage.queue_stats() == {}
    assert not await storage.purge("a", 1)
    assert isinstance(await storage.insert(NewWebhook("a", "{}", b"{}", 1.0, routes=(Route("ci"),))), int)
