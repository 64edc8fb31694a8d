"""kwp.stream without sockets: a fake request, a Clock for the keep-alives
and a temp-file storage; the stream's rules of §9."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import CancelledError, ensureDeferred

from kwp import stream as stream_module
from kwp.auth import authorize
from kwp.config import parse_config
from kwp.errors import ApiError
from kwp.storage import NewWebhook, Route
from kwp.stream import StreamHub, StreamSpec, encode_smee, encode_webhook
from tests.fakes import FakeRequest
from tests.support import sse_events, until
from tests.test_storage import storage  # noqa: F401 (fixture)

CONFIG = parse_config(
    {
        "channels": [
            {
                "name": "gh",
                "token": "owner",
                "consumers": [{"name": "ci", "token": "ci-token"}, {"name": "chat", "token": "chat-token"}],
            },
            {"name": "plain", "token": "plain-token"},
        ]
    }
)
OWNER = authorize(CONFIG, "gh", "Bearer owner")
CI = authorize(CONFIG, "gh", "Bearer ci-token")


def hook(n, *consumers, channel="gh", headers=None, body=None):
    headers = headers or {"content-type": "application/json", "x-n": str(n)}
    body = body if body is not None else json.dumps({"n": n}).encode()
    return NewWebhook(channel, json.dumps(headers), body, 1000.0 + n, routes=tuple(Route(c) for c in consumers))


def events_of(request: FakeRequest) -> list[dict]:
    return sse_events(request.body())


def webhook_ids(request: FakeRequest) -> list[int]:
    return [json.loads(e["data"])["id"] for e in events_of(request) if e.get("event") == "webhook"]


class Streams:
    """A hub on a Clock over the temp-file storage, and the streams opened on it."""

    def __init__(self, storage, **options):  # noqa: F811
        self.clock = task.Clock()
        self.storage = storage
        self.hub = StreamHub(storage, self.clock, **options)

    def open(self, spec=StreamSpec(), channel="gh", request=None, authorization="Bearer owner"):
        request = request or FakeRequest()
        done = ensureDeferred(self.hub.open(request, channel, spec, authorization))
        return request, done

    async def store(self, *webhooks):
        ids = [await self.storage.insert(w) for w in webhooks]
        self.hub.stored(webhooks[0].channel)
        self.clock.advance(0)
        return ids


@pytest.fixture
def streams(storage):  # noqa: F811
    return Streams(storage)


def stop(done):
    done.addErrback(lambda f: f.trap(CancelledError))
    done.cancel()


@pytest_twisted.ensureDeferred
async def test_the_headers_and_a_first_comment_go_out_at_once_then_each_webhook_as_stored(streams):
    await streams.store(hook(1))
    request, done = streams.open()
    await until(lambda: request.written, what="the first lines")
    assert request.headers[b"content-type"] == b"text/event-stream"
    assert request.body().startswith(b": ")
    # The client's last event id is where it stands: after what was stored.
    assert events_of(request) == [{"id": "1"}]
    await streams.store(hook(2), hook(3))
    await until(lambda: webhook_ids(request) == [2, 3], what="webhooks 2 and 3")
    second = events_of(request)[1]
    assert (second["id"], second["event"]) == ("2", "webhook")
    assert json.loads(second["data"]) == {
        "id": 2,
        "headers": {"content-type": "application/json", "x-n": "2"},
        "payload": {"n": 2},
        "received_at": 1002,
    }
    # Another channel's webhooks are not its.
    await streams.store(hook(4, channel="plain"))
    await streams.store(hook(5))
    await until(lambda: webhook_ids(request) == [2, 3, 5], what="webhook 5")
    stop(done)
    assert streams.hub.count("gh") == 0


@pytest_twisted.ensureDeferred
async def test_a_resumed_stream_sends_the_history_then_the_live_ones_without_gap_or_repeat(streams, monkeypatch):
    monkeypatch.setattr(stream_module, "PAGE", 3)
    await streams.storage.insert(hook(0))
    for n in range(1, 9):
        await streams.storage.insert(hook(n))
    reads = []
    events_after = streams.storage.events_after

    def read(*args):
        # A webhook stored while the history is read, in the middle of it.
        if len(reads) == 1:
            ensureDeferred(streams.store(hook(100)))
        reads.append(args[1])
        return events_after(*args)

    monkeypatch.setattr(streams.storage, "events_after", read)
    request, done = streams.open(StreamSpec(after=2))
    await until(lambda: webhook_ids(request)[-1:] == [10], what="the history and webhook 10")
    await streams.store(hook(11))
    await until(lambda: webhook_ids(request)[-1:] == [11], what="webhook 11")
    assert webhook_ids(request) == list(range(3, 12))
    assert events_of(request)[0] == {"id": "2"}
    stop(done)


@pytest_twisted.ensureDeferred
async def test_one_read_per_stream_for_a_batch_of_stores(streams, monkeypatch):
    reads = []
    events_after = streams.storage.events_after
    monkeypatch.setattr(streams.storage, "events_after", lambda *a: reads.append(a) or events_after(*a))
    request, done = streams.open(StreamSpec(after=0))
    await until(lambda: len(reads) == 1)
    for n in range(5):
        await streams.storage.insert(hook(n))
        streams.hub.stored("gh")
    streams.clock.advance(0)
    await until(lambda: len(webhook_ids(request)) == 5)
    assert len(reads) == 2
    stop(done)


@pytest_twisted.ensureDeferred
async def test_streams_at_the_same_position_share_a_read(streams, monkeypatch):
    reads, answered = [], []
    events_after = streams.storage.events_after

    def counted(*a):
        reads.append(a)
        return events_after(*a).addCallback(lambda rows: answered.append(a) or rows)

    monkeypatch.setattr(streams.storage, "events_after", counted)
    opened = [streams.open(StreamSpec(after=0)) for _ in range(3)]
    mine, mine_done = streams.open(StreamSpec(after=0, consumer="ci"))
    # Answered, not only asked: a stream whose first read is under way when
    # the webhooks are stored is not yet at the others' position.
    await until(lambda: len(answered) == 4, what="each stream's first read")
    await streams.store(hook(1, "ci"), hook(2))
    await until(lambda: all(webhook_ids(r) == [1, 2] for r, _ in opened) and webhook_ids(mine) == [1])
    # One read for the three at the same position, one for the consumer's.
    assert sorted(a[3] or "" for a in reads[4:]) == ["", "ci"]
    # A stream that fell behind reads on its own, and catches up.
    late, late_done = streams.open(StreamSpec(after=1))
    await until(lambda: webhook_ids(late) == [2])
    for _, done in [*opened, (mine, mine_done), (late, late_done)]:
        stop(done)


@pytest_twisted.ensureDeferred
async def test_keep_alive_comments_every_15_seconds(streams):
    request, done = streams.open(StreamSpec(after=0))
    await until(lambda: request.written)
    written = len(request.written)
    streams.clock.advance(14.9)
    assert len(request.written) == written
    streams.clock.advance(0.1)
    assert request.written[written:] == [b": keep-alive\n\n"]
    streams.clock.advance(15)
    assert request.written[written:] == [b": keep-alive\n\n"] * 2
    stop(done)
    streams.clock.advance(60)
    assert len(request.written) == written + 2


@pytest_twisted.ensureDeferred
async def test_the_smee_format(streams):
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "cookie": "a=b",
        "authorization": "Bearer x",
        "x-forwarded-for": "1.2.3.4",
        "x-real-ip": "1.2.3.4",
        "forwarded": "for=1.2.3.4",
        "x-http-method-override": "DELETE",
        "expect": "100-continue",
        "content-encoding": "gzip",
    }
    await streams.storage.insert(hook(1))
    request, done = streams.open(StreamSpec(smee=True))
    await until(lambda: request.written)
    assert events_of(request) == [{"id": "1", "event": "ready", "data": "{}"}]
    [webhook_id] = await streams.store(hook(2, headers=headers, body=b'{\n  "zen": "ok"\n}'))
    await until(lambda: len(events_of(request)) == 2)
    event = events_of(request)[1]
    assert set(event) == {"id", "data"} and event["id"] == str(webhook_id)
    assert json.loads(event["data"]) == {
        "content-type": "application/json",
        "x-github-event": "push",
        "body": {"zen": "ok"},
        "query": {},
        "timestamp": 1002000,
    }
    # A ping every 30 seconds, beside the keep-alive comments.
    written = len(request.written)
    streams.clock.advance(15)
    assert request.written[written:] == [b": keep-alive\n\n"]
    streams.clock.advance(15)
    assert request.written[written + 1 :] == [b": keep-alive\n\nevent: ping\ndata: {}\n\n"]
    stop(done)


def test_bodies_with_line_breaks_go_on_one_data_line():
    from kwp.storage import Event

    event = Event(7, 1000.5, '{"a":"b"}', b'{\r\n "x": [1,\n 2], "t": "\\u00e9\\n"}')
    encoded = encode_webhook(event)
    assert encoded.count(b"\n") == 4 and encoded.endswith(b"\n\n")
    data = encoded.split(b"\n")[2]
    assert json.loads(data[len(b"data: ") :]) == {
        "id": 7,
        "headers": {"a": "b"},
        "payload": {"x": [1, 2], "t": "\u00e9\n"},
        "received_at": 1000,
    }
    assert encode_smee(event).count(b"\n") == 3


@pytest_twisted.ensureDeferred
async def test_a_consumer_sees_only_what_was_routed_to_it(streams):
    request, done = streams.open(StreamSpec(consumer="ci", after=0))
    await streams.store(hook(1, "chat"), hook(2, "ci", "chat"), hook(3), hook(4, "ci"))
    await until(lambda: webhook_ids(request) == [2, 4])
    stop(done)


@pytest_twisted.ensureDeferred
async def test_at_most_100_streams_a_channel(streams):
    opened = [streams.open(StreamSpec(after=0)) for _ in range(100)]
    with pytest.raises(ApiError) as caught:
        await streams.hub.open(FakeRequest(), "gh", StreamSpec())
    assert (caught.value.status, caught.value.code, caught.value.headers) == (
        429,
        "too_many_requests",
        {"Retry-After": "10"},
    )
    # Other channels are not held back; a stream that ends makes room.
    other = streams.open(StreamSpec(after=0), channel="plain")
    stop(opened[0][1])
    again = streams.open(StreamSpec(after=0))
    for _, done in [*opened[1:], other, again]:
        stop(done)
    assert streams.hub.count("gh") == 0


@pytest_twisted.ensureDeferred
async def test_a_slow_client_is_not_read_for_until_its_buffer_drains(streams, monkeypatch):
    monkeypatch.setattr(stream_module, "PAGE", 50)
    reads = []
    events_after = streams.storage.events_after
    monkeypatch.setattr(streams.storage, "events_after", lambda *a: reads.append(a) or events_after(*a))
    request = FakeRequest(pause_after_write=True)
    _, done = streams.open(StreamSpec(after=0), request=request)
    await until(lambda: request.written)
    for n in range(20):
        await streams.store(hook(n))
    # The first line filled the buffer: nothing was read since.
    assert reads == [] and webhook_ids(request) == []
    delivered = 0
    while delivered < 20:
        request.producer.resumeProducing()
        await until(lambda: len(webhook_ids(request)) > delivered)
        # One webhook per resume: a full buffer stops the page being written.
        assert len(webhook_ids(request)) == delivered + 1
        delivered += 1
    assert webhook_ids(request) == list(range(1, 21))
    assert len(reads) == 20
    stop(done)


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_nothing_for_a_minute_is_disconnected(streams):
    request = FakeRequest(pause_after_write=True)
    _, done = streams.open(StreamSpec(after=0), request=request)
    await until(lambda: request.written)
    streams.clock.advance(45)
    assert not request.transport.aborted
    streams.clock.advance(15)
    assert request.transport.aborted
    stop(done)


@pytest_twisted.ensureDeferred
async def test_closing_the_hub_ends_every_stream(streams):
    request, done = streams.open(StreamSpec(after=0))
    await until(lambda: request.producer is not None)
    streams.hub.close()
    assert await done == b""
    assert request.producer is None and streams.hub.count("gh") == 0
    with pytest.raises(ApiError) as caught:
        streams.hub.check_room("gh")
    assert caught.value.status == 503


def test_what_a_stream_request_asks_for():
    assert StreamSpec.parse(OWNER, {}, None) == StreamSpec()
    assert StreamSpec.parse(OWNER, {"after": "5", "format": "smee"}, None) == StreamSpec(after=5, smee=True)
    # What an EventSource sends when it reconnects wins over the URL's after.
    assert StreamSpec.parse(OWNER, {"after": "5"}, "9") == StreamSpec(after=9)
    assert StreamSpec.parse(OWNER, {"consumer": "chat"}, "") == StreamSpec(consumer="chat")
    assert StreamSpec.parse(CI, {}, None) == StreamSpec(consumer="ci")
    for args, last in (
        ({"after": "-1"}, None),
        ({"after": "x"}, None),
        ({}, "abc"),
        ({}, "9" * 5000),
        ({"format": "xml"}, None),
    ):
        with pytest.raises(ApiError) as caught:
            StreamSpec.parse(OWNER, args, last)
        assert caught.value.code == "bad_request"
    with pytest.raises(ApiError) as caught:
        StreamSpec.parse(CI, {"consumer": "chat"}, None)
    assert caught.value.code == "forbidden"
    with pytest.raises(ApiError) as caught:
        StreamSpec.parse(OWNER, {"consumer": "nobody"}, None)
    assert caught.value.code == "not_found"


@pytest_twisted.ensureDeferred
async def test_a_reload_ends_the_streams_whose_token_no_longer_reaches_them(streams):
    owner, owner_done = streams.open(StreamSpec(after=0))
    chat, chat_done = streams.open(StreamSpec(consumer="chat", after=0))
    ci, ci_done = streams.open(StreamSpec(consumer="ci", after=0), authorization="Bearer ci-token")
    await until(lambda: owner.producer and chat.producer and ci.producer)
    streams.hub.follow(CONFIG)
    assert streams.hub.count("gh") == 3
    rotated = parse_config(
        {
            "channels": [
                {
                    "name": "gh",
                    "token": "owner",
                    "consumers": [{"name": "ci", "token": "new-ci-token"}],
                },
                {"name": "plain", "token": "plain-token"},
            ]
        }
    )
    streams.hub.follow(rotated)
    assert await ci_done == b"" and await chat_done == b""
    assert streams.hub.count("gh") == 1 and not owner_done.called
    stop(owner_done)
