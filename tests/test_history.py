"""kwp.history without sockets: the query rules of §8, paging and filters,
what a consumer's token sees, replay of one event and of a window, purge,
the retention from the config and the pruner."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from kwp import history
from kwp.auth import authorize
from kwp.config import parse_config
from kwp.errors import ApiError
from kwp.history import History, Listing, Window, encode_event, encode_page, replay_targets, retention
from kwp.storage.prune import Pruner
from kwp.storage import Attempt, EventQuery, NewWebhook, Retention, Route
from tests.test_storage import storage  # noqa: F401 (fixture)

CONFIG = parse_config(
    {
        "server": {"admin-token": "admin", "retention-hours": 2, "history-max": 500},
        "channels": [
            {
                "name": "gh",
                "token": "owner",
                "retention-hours": 0.5,
                "consumers": [
                    {"name": "ci", "token": "ci-token"},
                    {"name": "chat", "token": "chat-token"},
                ],
            },
            {"name": "plain", "token": "plain-token", "history-max": 3},
            {"name": "other", "token": "other-token"},
        ],
    }
)


def access(token: str, channel: str = "gh"):
    return authorize(CONFIG, channel, f"Bearer {token}")


OWNER, CI, ADMIN = access("owner"), access("ci-token"), access("admin")


def hook(n: int, *consumers: str, channel: str = "gh", event: str = "push", at: float | None = None):
    headers = json.dumps({"content-type": "application/json", "x-event": event})
    body = json.dumps({"n": n, "action": "opened" if n % 2 else "closed"}).encode()
    return NewWebhook(channel, headers, body, 1000.0 + n if at is None else at, routes=tuple(Route(c) for c in consumers))


class Woken(list):
    def __call__(self, channel):
        self.append(channel)


@pytest.fixture
def woken():
    return Woken()


@pytest.fixture
def hist(storage, woken):  # noqa: F811
    clock = task.Clock()
    clock.advance(5000)
    return History(storage, clock, woken)


def parse_error(call, status=400, code="bad_request") -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert (caught.value.status, caught.value.code) == (status, code), caught.value
    return caught.value


# --- the query ---------------------------------------------------------------------


def test_listing_defaults_and_bounds():
    listing = Listing.parse(OWNER, {})
    assert (listing.limit, listing.filter, listing.query.consumer) == (50, None, None)
    parsed = Listing.parse(
        OWNER, {"limit": "1000", "before": "9", "since": "1700000000.5", "until": "1800000000", "state": "dead"}
    )
    assert (parsed.limit, parsed.query.before, parsed.query.since, parsed.query.until, parsed.query.state) == (
        1000,
        9,
        1700000000.5,
        1800000000.0,
        "dead",
    )
    for args in (
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"before": "0"},
        {"before": "-1"},
        {"before": "9" * 5000},
        {"since": "-5"},
        {"since": "1e12"},
        {"since": ".5"},
        {"until": "nan"},
        {"state": "deleted"},
        {"consumer": "a b"},
        {"filter": "headers.["},
        {"filter": ""},
    ):
        parse_error(lambda: Listing.parse(OWNER, args))


def test_a_bad_filter_says_why():
    error = parse_error(lambda: Listing.parse(OWNER, {"filter": "body.action =="}))
    assert "filter" in error.message and "JMESPath" in error.message


def test_a_consumer_token_is_held_to_its_consumer():
    assert Listing.parse(CI, {}).query.consumer == "ci"
    assert Listing.parse(CI, {"consumer": "ci"}).query.consumer == "ci"
    parse_error(lambda: Listing.parse(CI, {"consumer": "chat"}), 403, "forbidden")
    # Webhooks not routed to it are not its to see.
    parse_error(lambda: Listing.parse(CI, {"state": "filtered"}), 403, "forbidden")
    # The channel's token may ask about any consumer, even one a reload removed.
    assert Listing.parse(OWNER, {"consumer": "gone"}).query.consumer == "gone"


def test_window_rules():
    window = Window.parse(OWNER, b'{"since": 10, "until": 20.5, "consumer": "ci", "filter": "body.n"}')
    assert (window.query.since, window.query.until, window.query.consumer, window.after) == (10.0, 20.5, "ci", 0)
    assert Window.parse(OWNER, b'{"state": "dead"}').query.state == "dead"
    assert Window.parse(CI, b'{"state": "dead"}').query.consumer == "ci"
    for body in (
        b"",
        b"{}",
        b'{"until": 5}',
        b"[1]",
        b"not json",
        b'{"since": "yesterday"}',
        b'{"since": true}',
        b'{"state": "lost"}',
        b'{"filter": "body.["}',
        b'{"since": 1, "after": -1}',
        b'{"since": 1, "typo": 1}',
    ):
        parse_error(lambda: Window.parse(OWNER, body))
    parse_error(lambda: Window.parse(OWNER, b'{"since": 1, "consumer": "nobody"}'), 404, "not_found")
    parse_error(lambda: Window.parse(CI, b'{"since": 1, "consumer": "chat"}'), 403, "forbidden")
    parse_error(lambda: Window.parse(CI, b'{"state": "filtered"}'), 403, "forbidden")


def test_replay_targets():
    assert replay_targets(OWNER, b"") is None
    assert replay_targets(OWNER, b"{}") is None
    assert replay_targets(OWNER, b'{"consumers": ["chat", "ci", "chat"]}') == ["chat", "ci"]
    assert replay_targets(CI, b"") == ["ci"]
    assert replay_targets(CI, b'{"consumers": ["ci"]}') == ["ci"]
    parse_error(lambda: replay_targets(CI, b'{"consumers": ["chat"]}'), 403, "forbidden")
    parse_error(lambda: replay_targets(OWNER, b'{"consumers": ["nobody"]}'), 404, "not_found")
    parse_error(lambda: replay_targets(OWNER, b'{"consumers": "ci"}'))
    parse_error(lambda: replay_targets(OWNER, b"[]"))


def test_retention_from_the_config():
    assert retention(CONFIG) == Retention(
        seconds=7200.0, history_max=500, channels={"gh": (1800.0, 500), "plain": (7200.0, 3)}
    )
    assert retention(parse_config({"channels": []})) == Retention()


# --- listing -------------------------------------------------------------------------


async def fill(storage, count, *consumers, **kwargs):  # noqa: F811
    return [await storage.insert(hook(n, *consumers, **kwargs)) for n in range(count)]


@pytest_twisted.ensureDeferred
async def test_pages_newest_first_until_the_end(storage, hist):  # noqa: F811
    ids = await fill(storage, 7, "ci")
    seen, before, pages = [], None, 0
    while True:
        args = {"limit": "3"} if before is None else {"limit": "3", "before": str(before)}
        items, before = await hist.page(OWNER, Listing.parse(OWNER, args))
        seen += [e.id for e in items]
        pages += 1
        if before is None:
            break
    assert seen == ids[::-1] and pages == 3
    # A page that ends exactly at the oldest says so.
    items, before = await hist.page(OWNER, Listing.parse(OWNER, {"limit": "7"}))
    assert len(items) == 7 and before is None


@pytest_twisted.ensureDeferred
async def test_a_filter_reads_a_bounded_number_of_events_per_request(storage, hist, monkeypatch):  # noqa: F811
    monkeypatch.setattr(history, "SCAN_PAGE", 4)
    monkeypatch.setattr(history, "SCAN_LIMIT", 8)
    await fill(storage, 20, "ci")
    asked = []
    events = storage.events
    monkeypatch.setattr(storage, "events", lambda *a: asked.append(a) or events(*a))
    # n == 0 is the oldest only: each request reads 8 events at most.
    listing = {"filter": "body.n == `0`"}
    items, before = await hist.page(OWNER, Listing.parse(OWNER, listing))
    assert (items, before, len(asked)) == ([], 13, 2)
    items, before = await hist.page(OWNER, Listing.parse(OWNER, {**listing, "before": "13"}))
    assert (items, before) == ([], 5)
    items, before = await hist.page(OWNER, Listing.parse(OWNER, {**listing, "before": "5"}))
    assert ([e.id for e in items], before) == ([1], None)
    # A filter that matches often fills the page and says where to go on.
    items, before = await hist.page(OWNER, Listing.parse(OWNER, {"filter": "body.action == 'opened'", "limit": "3"}))
    assert ([e.id for e in items], before) == ([20, 18, 16], 16)


@pytest_twisted.ensureDeferred
async def test_a_filter_that_fails_on_a_webhook_does_not_match_it(storage, hist):  # noqa: F811
    await storage.insert(hook(1, "ci"))
    await storage.insert(NewWebhook("gh", "{}", b'{"n": "text"}', 2000.0, routes=(Route("ci"),)))
    # abs() of a string is a JMESPath type error.
    items, _ = await hist.page(OWNER, Listing.parse(OWNER, {"filter": "abs(body.n) == `1`"}))
    assert [e.id for e in items] == [1]


@pytest_twisted.ensureDeferred
async def test_state_and_consumer_select(storage, hist):  # noqa: F811
    await storage.insert(hook(1, "ci", "chat"))
    await storage.insert(hook(2))
    await storage.insert(hook(3, "chat"))
    await storage.forward_failed("gh", 3, Attempt(2000.0, 500, "boom"), None, "dead", consumer="chat")
    taken = await storage.claim("gh", "c", 10, 2000.0, None, consumer="ci")
    await storage.finish_claim("c", 2001.0)
    assert [t.id for t in taken] == [1]

    async def ids(token_access, **args):
        items, _ = await hist.page(token_access, Listing.parse(token_access, args))
        return [e.id for e in items]

    assert await ids(OWNER) == [3, 2, 1]
    assert await ids(OWNER, state="pending") == [1]
    assert await ids(OWNER, state="dead") == [3]
    assert await ids(OWNER, state="filtered") == [2]
    assert await ids(OWNER, state="delivered") == []
    assert await ids(OWNER, consumer="ci", state="delivered") == [1]
    assert await ids(OWNER, consumer="chat") == [3, 1]
    assert await ids(OWNER, since="1002", until="1003") == [3, 2]
    assert await ids(CI) == [1]
    assert await ids(access("chat-token")) == [3, 1]


@pytest_twisted.ensureDeferred
async def test_a_consumer_token_sees_its_own_delivery_only(storage, hist):  # noqa: F811
    await storage.insert(hook(1, "ci", "chat"))
    await storage.insert(hook(2, "chat"))
    items, _ = await hist.page(CI, Listing.parse(CI, {}))
    assert [(e.id, [d.consumer for d in e.deliveries]) for e in items] == [(1, ["ci"])]
    assert [d.consumer for d in (await hist.event(CI, 1)).deliveries] == ["ci"]
    assert [d.consumer for d in (await hist.event(OWNER, 1)).deliveries] == ["chat", "ci"]
    for webhook_id in (2, 99, 2**64):
        with pytest.raises(ApiError) as caught:
            await hist.event(CI, webhook_id)
        assert caught.value.code == "not_found"
    with pytest.raises(ApiError):
        await hist.event(access("other-token", "other"), 1)


@pytest_twisted.ensureDeferred
async def test_items_are_encoded_as_the_contract_says(storage, hist):  # noqa: F811
    await storage.insert(hook(1, "ci", "chat"))
    await storage.claim("gh", "c", 1, 1500.25, None, consumer="ci")
    await storage.finish_claim("c", 1501.5)
    await storage.forward_failed(
        "gh", 1, Attempt(1600.0, 502, "unexpected status 502", 12.34, "bad gateway"), 1700.0, "pending", consumer="chat"
    )
    [event], _ = await hist.page(OWNER, Listing.parse(OWNER, {}))
    item = json.loads(encode_event(event))
    assert item == {
        "id": 1,
        "received_at": 1001,
        "size": len(b'{"n": 1, "action": "opened"}'),
        "state": "pending",
        "headers": {"content-type": "application/json", "x-event": "push"},
        "payload": {"n": 1, "action": "opened"},
        "consumers": [
            {
                "name": "chat",
                "state": "pending",
                "attempts": 1,
                "delivered_at": None,
                "next_attempt_at": 1700.0,
                "last_status": 502,
                "last_error": "unexpected status 502",
                "taken_at": None,
                "handouts": 0,
            },
            {
                "name": "ci",
                "state": "delivered",
                "attempts": 0,
                "delivered_at": 1501.5,
                "next_attempt_at": None,
                "last_status": None,
                "last_error": None,
                "taken_at": 1500.25,
                "handouts": 1,
            },
        ],
    }
    detail = json.loads(encode_event(await hist.event(OWNER, 1), with_log=True))
    assert [c["log"] for c in detail["consumers"]] == [
        [
            {
                "at": 1600.0,
                "status_code": 502,
                "error": "unexpected status 502",
                "duration_ms": 12.3,
                "response_excerpt": "bad gateway",
            }
        ],
        [],
    ]
    assert json.loads(encode_page([event], 7))["next_before"] == 7
    assert json.loads(encode_page([], None)) == {"items": [], "next_before": None}


# --- replay and purge ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_replay_of_one_event(storage, hist, woken):  # noqa: F811
    await storage.insert(hook(1, "ci", "chat"))
    await storage.insert(hook(2, "ci"))
    taken = await storage.claim("gh", "c", 10, 2000.0, None, consumer="ci")
    await storage.finish_claim("c", 2001.0)
    assert [t.id for t in taken] == [1, 2]
    # Default: the consumers it was routed to; chat still has it pending.
    assert await hist.replay(OWNER, 1, None) == {"replayed": ["ci"], "already_pending": ["chat"]}
    assert woken == ["gh"]
    # At the tail of ci's queue, behind nothing but itself.
    assert [r.id for r in await storage.list("gh", 10, consumer="ci")] == [1]
    assert await hist.replay(OWNER, 1, None) == {"replayed": [], "already_pending": ["chat", "ci"]}
    assert woken == ["gh"]
    # A consumer that it was not routed to can be named.
    assert await hist.replay(OWNER, 2, ["chat"]) == {"replayed": ["chat"], "already_pending": []}
    assert [r.id for r in await storage.list("gh", 10, consumer="chat")] == [1, 2]
    # A consumer token: its own consumer only, and only what it can see.
    assert await hist.replay(access("chat-token"), 2, ["chat"]) == {"replayed": [], "already_pending": ["chat"]}
    for who, webhook_id in ((OWNER, 99), (OWNER, 2**64), (access("other-token", "other"), 1)):
        with pytest.raises(ApiError) as caught:
            await hist.replay(who, webhook_id, None)
        assert caught.value.code == "not_found"
    await storage.insert(hook(3, "chat"))
    with pytest.raises(ApiError) as caught:
        await hist.replay(CI, 3, ["ci"])
    assert caught.value.code == "not_found"


async def deliver_all(storage, consumer, at=3000.0):  # noqa: F811
    taken = await storage.claim("gh", f"take-{consumer}-{at}", 10000, at, None, consumer=consumer)
    await storage.finish_claim(f"take-{consumer}-{at}", at)
    return [t.id for t in taken]


@pytest_twisted.ensureDeferred
async def test_replay_of_a_window_keeps_receive_order(storage, hist, woken):  # noqa: F811
    ids = await fill(storage, 10, "ci")
    await deliver_all(storage, "ci")
    await storage.insert(hook(50, "ci"))  # pending, received later
    count, next_after = await hist.replay_window(OWNER, Window.parse(OWNER, b'{"since": 1002, "until": 1007}'))
    assert (count, next_after, woken) == (6, None, ["gh"])
    # Behind the one that was pending, in receive order.
    assert [r.id for r in await storage.list("gh", 100, consumer="ci")] == [11, *ids[2:8]]
    # What a consumer did not take (filtered for it), given to it after all.
    body = b'{"filter": "body.action == \'opened\'", "state": "filtered", "consumer": "chat"}'
    assert await hist.replay_window(OWNER, Window.parse(OWNER, body)) == (5, None)
    assert [r.id for r in await storage.list("gh", 100, consumer="chat")] == [2, 4, 6, 8, 10]


@pytest_twisted.ensureDeferred
async def test_a_window_larger_than_a_call_is_replayed_oldest_first_in_parts(storage, hist, monkeypatch):  # noqa: F811
    monkeypatch.setattr(history, "MAX_REPLAY", 4)
    monkeypatch.setattr(history, "SCAN_PAGE", 3)
    monkeypatch.setattr(history, "REPLAY_CHUNK", 3)
    await fill(storage, 10, "ci")
    await deliver_all(storage, "ci")
    replayed, after = [], 0
    while True:
        body = json.dumps({"since": 0, "after": after}).encode()
        count, after = await hist.replay_window(OWNER, Window.parse(OWNER, body))
        replayed.append(count)
        if after is None:
            break
    assert replayed == [4, 4, 2]
    assert [r.id for r in await storage.list("gh", 100, consumer="ci")] == list(range(1, 11))


@pytest_twisted.ensureDeferred
async def test_dead_letters_are_replayed_whatever_else_is_pending(storage, hist):  # noqa: F811
    for n in range(1, 5):
        await storage.insert(hook(n, "ci", "chat"))
    for webhook_id in (1, 3):
        await storage.forward_failed("gh", webhook_id, Attempt(2000.0, 500, "x"), None, "dead", consumer="chat")
    await storage.forward_failed("gh", 4, Attempt(2000.0, 500, "x"), None, "dead", consumer="ci")
    # 1 and 3 are still pending for ci: dead for chat all the same.
    count, _ = await hist.replay_window(OWNER, Window.parse(OWNER, b'{"state": "dead"}'))
    assert count == 3
    assert [r.id for r in await storage.list("gh", 10, consumer="chat")] == [2, 4, 1, 3]
    assert [r.id for r in await storage.list("gh", 10, consumer="ci")] == [1, 2, 3, 4]
    assert (await storage.queue("gh", 10, consumer="ci"))[2][-1].state == "pending"
    # Nothing dead is left.
    assert await hist.replay_window(OWNER, Window.parse(OWNER, b'{"state": "dead"}')) == (0, None)


@pytest_twisted.ensureDeferred
async def test_a_consumer_token_replays_its_own_dead_letters_only(storage, hist):  # noqa: F811
    await storage.insert(hook(1, "ci", "chat"))
    for consumer in ("ci", "chat"):
        await storage.forward_failed("gh", 1, Attempt(2000.0, 500, "x"), None, "dead", consumer=consumer)
    assert await hist.replay_window(CI, Window.parse(CI, b'{"state": "dead"}')) == (1, None)
    assert (await storage.queue("gh", 10, consumer="chat"))[2][0].state == "dead"
    assert (await storage.queue("gh", 10, consumer="ci"))[2][0].state == "pending"


@pytest_twisted.ensureDeferred
async def test_purge(storage, hist):  # noqa: F811
    await storage.insert(hook(1, "ci"))
    with pytest.raises(ApiError) as caught:
        await hist.purge(CI, 1)
    assert caught.value.code == "forbidden"
    await hist.purge(OWNER, 1)
    for who in (OWNER, ADMIN):
        with pytest.raises(ApiError) as caught:
            await hist.purge(who, 1)
        assert caught.value.code == "not_found"
    assert await storage.list("gh", 10, consumer="ci") == []
    assert await storage.event("gh", 1) is None


# --- the pruner ------------------------------------------------------------------------


class PruneLog:
    """A storage whose prune answers from a script (numbers or exceptions)."""

    def __init__(self, clock, script):
        self.clock = clock
        self.script = list(script)
        self.calls = []

    def prune(self, now, batch):
        self.calls.append((self.clock.seconds(), batch))
        step = self.script.pop(0) if self.script else 0
        return fail(step) if isinstance(step, Exception) else succeed(step)


def history_pruner(storage, clock, **options) -> Pruner:
    """A Pruner whose delivery-id job never comes due."""
    return Pruner(storage, lambda: CONFIG, clock, seen_interval=float("inf"), **options)


def test_the_pruner_works_in_batches_with_pauses_every_interval(captured_log):
    clock = task.Clock()
    storage = PruneLog(clock, [500, 500, 120, RuntimeError("database is locked"), 500, 7])
    pruner = history_pruner(storage, clock, interval=5, batch=500, pause=0.05)
    pruner.startService()
    assert storage.calls == []
    clock.advance(5)
    assert storage.calls == [(5, 500)]
    clock.advance(0.05)
    clock.advance(0.05)
    assert [at for at, _ in storage.calls] == pytest.approx([5, 5.05, 5.1])
    clock.advance(1)
    assert len(storage.calls) == 3
    # A failure is logged; the next pass comes as planned.
    clock.advance(4)
    assert len(storage.calls) == 4
    [logged] = [e for e in captured_log.events if "log_failure" in e]
    assert logged["log_format"].startswith("pruning failed") and str(logged["log_failure"].value) == "database is locked"
    clock.advance(5)
    clock.advance(0.05)
    assert [at for at, _ in storage.calls][4:] == pytest.approx([15.1, 15.15])
    assert pruner.pruned == 500 + 500 + 120 + 500 + 7
    pruner.stopService()
    clock.advance(100)
    assert len(storage.calls) == 6


def test_a_stop_waits_for_the_batch_under_way():
    clock = task.Clock()
    answer = Deferred()

    class Slow:
        def prune(self, now, batch):
            return answer

    pruner = history_pruner(Slow(), clock, interval=1, batch=10, pause=1)
    pruner.startService()
    clock.advance(1)
    stopped = pruner.stopService()
    assert not stopped.called
    answer.callback(10)
    assert stopped.called
    # A full batch, but the pruner is stopping: no other one.
    clock.advance(10)


@pytest_twisted.ensureDeferred
async def test_retention_and_history_max_from_the_config_prune_with_time(storage):  # noqa: F811
    storage.retention = retention(CONFIG)
    clock = task.Clock()
    clock.advance(1000)
    for n in range(5):
        await storage.insert(hook(n, "default", channel="plain", at=1000.0))
    await storage.insert(hook(9, "ci", at=1000.0))
    taken = await storage.claim("plain", "p", 10, 1000.0, None)
    await storage.finish_claim("p", 1000.0)
    assert len(taken) == 5
    await deliver_all(storage, "ci", at=1000.0)
    await storage.insert(hook(10, "ci", at=1000.0))
    pruner = history_pruner(storage, clock, interval=5, batch=100, pause=0.05)
    # history-max 3 on plain: the two oldest delivered go at once.
    assert await pruner.prune_history() == 2
    assert [e.id for e in await storage.events("plain", EventQuery(), 10)] == [5, 4, 3]
    # gh keeps 30 minutes; plain two hours; the pending webhook stays.
    clock.advance(1801)
    assert await pruner.prune_history() == 1
    assert [e.id for e in await storage.events("gh", EventQuery(), 10)] == [7]
    clock.advance(5399)
    assert await pruner.prune_history() == 0
    clock.advance(1)
    assert await pruner.prune_history() == 3
    assert await storage.events("plain", EventQuery(), 10) == []


def test_make_service_sets_the_retention_at_start_and_on_reload_and_runs_the_pruner(tmp_path):
    from kwp.tap import Options, makeService
    from tests.support import write_config

    data = {"server": {"retention-hours": 1}, "channels": [{"name": "ch", "token": "t", "history-max": 7}]}
    path = write_config(tmp_path / "config.yml", data)
    options = Options(environ={})
    options.parseOptions(["-c", str(path), "-d", str(tmp_path / "kwp.db"), "-l", "tcp:0:interface=127.0.0.1"])
    service = makeService(options, reactor=task.Clock())
    storage = service.app.storage
    assert storage.retention == Retention(3600.0, 100_000, {"ch": (3600.0, 7)})
    children = list(service)
    assert children.index(storage) < children.index(service.pruner) < children.index(service.listeners[0])
    data["server"]["retention-hours"] = 0
    for hook in service.on_reload:
        hook(parse_config(data))
    assert storage.retention == Retention(0.0, 100_000, {"ch": (0.0, 7)})
