"""The storage service over adbapi: group commit of inserts, and every other
call as one transaction of kwp.storage.queries.

Inserts that arrive while a transaction runs wait in a queue and are written
together in the next one: one commit per batch, and each caller's Deferred
fires only after the commit that holds its webhook.  Successful pushes are
recorded in batches too (``GroupCommit``): a forwarder does not wait for
them before its next attempt, and a commit and a hand-over to the storage
thread per attempt would otherwise cost more than the attempt.  A backend
subclass gives the connection pool, the SQL dialect and what counts as
"cannot write now".

``on_stored`` and ``on_queue_changed`` callbacks hear of new deliveries and
of pause and lease changes after the commit: those of this process here, and
those of other nodes where the backend has them (PostgreSQL), as well as
``on_lease_wanted`` of other nodes' requests for a forwarding lease.
"""

from __future__ import annotations

import uuid

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kwp.storage import DEFAULT_CONSUMER, IStorage, NewWebhook, Retention, StorageError, StorageUnavailable
from kwp.storage import queries as q
from kwp.storage.queries import News

log = Logger()

# How long after a batch's commit the next batch is written, gathering the
# webhooks that arrive meanwhile (a webhook arriving later than that, when
# nothing is being written, is written at once).  Each transaction hands the
# GIL between the reactor thread and the writer thread a dozen times, which
# under load costs the reactor thread far more than the insert itself; a
# short window makes batches larger and those hand-overs rarer.
COMMIT_WINDOW = 0.002
# How long the first success of a batch waits for others; a forwarder that
# waits for its success (a target slower than kwp.forward.FAST_ANSWER)
# waits this much longer.
SUCCESS_WINDOW = 0.002


class GroupCommit:
    """Calls that come while a batch of theirs is written wait and are
    written together in the next one, started ``window`` seconds after the
    first of them; ``write(batch)`` returns a Deferred list of each call's
    result, or fails them all."""

    def __init__(self, reactor, write, window: float):
        self._reactor = reactor
        self._write = write
        self._window = window
        self._queue: list[tuple[object, Deferred]] = []
        self._writing = False
        self._timer: IDelayedCall | None = None

    def add(self, item) -> Deferred:
        d = Deferred()
        self._queue.append((item, d))
        if not self._writing and self._timer is None:
            self._timer = self._reactor.callLater(self._window, self._write_next)
        return d

    def flush(self) -> None:
        """Write what waits for its window now (a stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._write_next()

    def _write_next(self) -> None:
        self._timer = None
        batch, self._queue = self._queue, []
        self._writing = True

        def written(outcome):
            self._writing = False
            if self._queue:
                self._timer = self._reactor.callLater(self._window, self._write_next)
            return outcome

        def committed(results):
            for (_, d), result in zip(batch, results):
                d.callback(result)

        def failed(failure):
            for _, d in batch:
                d.errback(failure)

        self._write([item for item, _ in batch]).addBoth(written).addCallbacks(committed, failed)


def _tell(callbacks: list, what: str, *args) -> None:
    """Call each callback with args; one that fails is logged and the others
    are still called."""
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            log.failure("{what} callback failed", what=what)


@implementer(IStorage)
class AdbapiStorage(Service):
    name = "storage"
    dialect: q.Dialect
    commit_window = COMMIT_WINDOW
    shared = False
    # A batch of this many webhooks is written without waiting for the
    # window, beside the one being written when up to full_batches may be
    # written at once (None: batches always wait for the window).
    commit_batch: int | None = None
    full_batches = 1

    def __init__(self, reactor):
        self._reactor = reactor
        # This process among the nodes on one database (a forwarding lease's owner).
        self.node = uuid.uuid4().hex
        self._pool: adbapi.ConnectionPool | None = None
        self._successes = GroupCommit(reactor, self._write_successes, SUCCESS_WINDOW)
        self._queue: list[tuple[NewWebhook, Deferred]] = []
        # Batches being written.
        self._writing = 0
        # When the last batch was written (committed or failed).
        self._written_at = float("-inf")
        self._flush: IDelayedCall | None = None
        self._pending: set[Deferred] = set()
        self._stored_callbacks: list = []
        self._queue_callbacks: list = []
        self._wanted_callbacks: list = []
        # The transaction of each claim under way, by claim id.
        self._claiming: dict[str, Deferred] = {}
        # Finishes and releases of claims under way.
        self._settling: set[Deferred] = set()
        self.retention = Retention()

    # --- what other components hear ----------------------------------------------

    def on_stored(self, callback) -> None:
        """Call callback(channel, {consumer: new deliveries}) on the reactor
        after each commit that queued webhooks (inserts and replays); the
        mapping is empty for webhooks that no consumer took."""
        self._stored_callbacks.append(callback)

    def on_queue_changed(self, callback) -> None:
        """Call callback(channel, consumer) after a commit that changed the
        queue's pause switch or released its forwarding lease."""
        self._queue_callbacks.append(callback)

    def on_lease_wanted(self, callback) -> None:
        """Call callback(channel, consumer) when another node asks for the
        queue's forwarding lease."""
        self._wanted_callbacks.append(callback)

    def _stored(self, news: News) -> None:
        for channel, consumers in news.items():
            _tell(self._stored_callbacks, "on_stored", channel, consumers)

    def _queue_changed(self, channel: str, consumer: str) -> None:
        _tell(self._queue_callbacks, "on_queue_changed", channel, consumer)

    def _lease_wanted(self, channel: str, consumer: str) -> None:
        _tell(self._wanted_callbacks, "on_lease_wanted", channel, consumer)

    # --- what a backend provides -----------------------------------------------

    def _connection_pool(self) -> adbapi.ConnectionPool:
        raise NotImplementedError

    def _unavailable(self, error: BaseException) -> StorageUnavailable | None:
        """StorageUnavailable when error means that nothing can be written
        now (and what is stored is intact), else None."""
        return None

    # --- the service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._pool = self._connection_pool()
        self._pool.start()
        self._run(q.release_orphans, self.dialect).addErrback(lambda f: log.failure("releasing unfinished pulls", f))

    def stopService(self) -> Deferred:
        """Close the pool once the transactions already asked for are done."""
        if self._flush is not None:
            self._flush.cancel()
            self._write_next()
        self._successes.flush()
        super().stopService()
        pool, self._pool = self._pool, None

        def close(_):
            if pool is not None:
                pool.close()

        return DeferredList(list(self._pending)).addCallback(close)

    def _run(self, txn_function, *args, with_connection: bool = False) -> Deferred:
        if self._pool is None or not self.running:
            return fail(StorageError("the storage service is not running"))
        run = self._pool.runWithConnection if with_connection else self._pool.runInteraction
        d = run(txn_function, *args)
        self._pending.add(d)

        def settled(result):
            self._pending.discard(d)
            if isinstance(result, Failure):
                unavailable = self._unavailable(result.value)
                if unavailable is not None:
                    unavailable.__cause__ = result.value
                    return Failure(unavailable)
            return result

        return d.addBoth(settled)

    # --- receive ---------------------------------------------------------------

    def insert(self, webhook: NewWebhook) -> Deferred:
        d = Deferred()
        self._queue.append((webhook, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        """Write the queue commit_window after the last batch was written
        (on the next reactor turn when that is past, or when the queue holds
        commit_batch webhooks), unless a write is under way: the end of the
        running batch plans the next."""
        full = self.commit_batch is not None and len(self._queue) >= self.commit_batch
        if self._writing >= (self.full_batches if full else 1):
            return
        now = self._reactor.seconds()
        at = now if full else max(now, self._written_at + self.commit_window)
        if self._flush is not None:
            if self._flush.getTime() <= at:
                return
            self._flush.cancel()
        self._flush = self._reactor.callLater(at - now, self._write_next)

    def _write_next(self) -> None:
        self._flush = None
        batch, self._queue = self._queue, []
        self._writing += 1
        done = self._run(q.insert_batch, self.dialect, [w for w, _ in batch])

        def committed(results):
            self._stored(q.stored_news([w for w, _ in batch], results))
            for (_, d), result in zip(batch, results):
                d.callback(result)

        def failed(failure):
            if failure.check(StorageUnavailable):
                log.warn("cannot store webhooks: {reason}", reason=failure.value)
            for _, d in batch:
                d.errback(failure)

        def next_batch(outcome):
            self._writing -= 1
            self._written_at = self._reactor.seconds()
            if self._queue:
                self._schedule()
            return outcome

        done.addBoth(next_batch).addCallbacks(committed, failed)

    # --- pull ------------------------------------------------------------------

    def _run_unsynced(self, txn_function, *args) -> Deferred:
        """_run, for a transaction that a crash may undo (the backend need
        not wait for the disk at its commit)."""
        return self._run(txn_function, *args)

    def claim(self, channel, claim_id, limit, now, lease_seconds=None, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        """The caller may cancel what this returns (a pull whose client
        left): the transaction still commits, and a release_claim asked
        meanwhile runs after it."""
        # An unleased claim that a crash undoes was given back anyway: a
        # restart releases the claims of pulls it never finished.
        durable = lease_seconds is not None or self.dialect.pull_hold is not None
        run = self._run if durable else self._run_unsynced
        running = run(q.claim, self.dialect, channel, consumer, claim_id, limit, now, lease_seconds)
        self._claiming[claim_id] = running

        def settled(result):
            if self._claiming.get(claim_id) is running:
                del self._claiming[claim_id]
            return result

        answer = Deferred()
        running.addBoth(settled).chainDeferred(answer)
        return answer

    def _settle(self, txn_function, *args) -> Deferred:
        d = self._run(txn_function, *args)
        self._settling.add(d)

        def settled(result):
            self._settling.discard(d)
            return result

        return d.addBoth(settled)

    def _after_settles(self, txn_function, *args) -> Deferred:
        """Run a read of queues once the claims that this process settles
        now are settled: a client that got the whole answer of a pull and
        asks again sees what it took gone, with several connections as with
        one (the settle begins when the answer's connection closes)."""
        if not self._settling:
            return self._run(txn_function, *args)
        return DeferredList(list(self._settling)).addCallback(lambda _: self._run(txn_function, *args))

    def finish_claim(self, claim_id, now) -> Deferred:
        return self._settle(q.finish_claim, self.dialect, claim_id, now, self.retention)

    def release_claim(self, claim_id) -> Deferred:
        running = self._claiming.get(claim_id)
        if running is None:
            return self._settle(q.release_claim, claim_id)
        released = Deferred()
        self._settling.add(released)

        def then(result):
            self._settle(q.release_claim, claim_id).chainDeferred(released)
            return result

        running.addBoth(then)
        return released.addBoth(lambda result: self._settling.discard(released) or result)

    def ack(self, channel, ids, now, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.ack, self.dialect, channel, consumer, ids, now, self.retention)

    def list(self, channel, limit, after=0, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._after_settles(q.list_queue, channel, consumer, limit, after)

    def delete(self, channel, webhook_id, now, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.delete, self.dialect, channel, consumer, webhook_id, now, self.retention)

    def clear(self, channel, now, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.clear, self.dialect, channel, consumer, now, self.retention)

    # --- push ------------------------------------------------------------------

    def forward_window(self, channel, limit, now, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.forward_window, channel, consumer, limit, now)

    def forward_get(self, channel, webhook_id, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.forward_get, channel, consumer, webhook_id)

    def forward_succeeded(self, channel, webhook_id, attempt, *, consumer=DEFAULT_CONSUMER, token=None) -> Deferred:
        return self._successes.add(q.Success(channel, consumer, token, webhook_id, attempt))

    def _write_successes(self, batch: list[q.Success]) -> Deferred:
        return self._run(q.forward_succeeded, self.dialect, batch, self.retention)

    def forward_failed(
        self, channel, webhook_id, attempt, next_attempt_at, state, *, consumer=DEFAULT_CONSUMER, token=None
    ) -> Deferred:
        return self._run(
            q.forward_failed, self.dialect, channel, consumer, webhook_id, attempt, next_attempt_at, state, token
        )

    def queue_state(self, channel, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.queue_state, channel, consumer)

    def set_paused(self, channel, paused, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        d = self._run(q.set_paused, self.dialect, channel, consumer, paused)
        return d.addCallback(lambda _: self._queue_changed(channel, consumer))

    # --- the forwarding lease ----------------------------------------------------

    def acquire_lease(self, channel, owner, now, seconds, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.acquire_lease, channel, consumer, owner, now, seconds)

    def renew_lease(self, channel, owner, token, now, seconds, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.renew_lease, channel, consumer, owner, token, now, seconds)

    def want_lease(self, channel, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.want_lease, self.dialect, channel, consumer)

    def release_lease(self, channel, owner, token, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.release_lease, self.dialect, channel, consumer, owner, token)

    def queue(self, channel, limit, after=0, *, consumer=DEFAULT_CONSUMER) -> Deferred:
        return self._run(q.queue, channel, consumer, limit, after)

    def holds(self, channel, consumer) -> Deferred:
        return self._after_settles(q.holds, channel, consumer)

    def queue_stats(self) -> Deferred:
        return self._run(q.queue_stats)

    # --- history ---------------------------------------------------------------

    def events(self, channel, query, limit) -> Deferred:
        return self._run(q.events, channel, query, limit)

    def event(self, channel, webhook_id) -> Deferred:
        return self._run(q.event, channel, webhook_id)

    def events_after(self, channel, after, limit, consumer=None) -> Deferred:
        return self._run(q.events_after, channel, after, limit, consumer)

    def replay(self, channel, ids, consumers, now, state=None) -> Deferred:
        d = self._run(q.replay, self.dialect, channel, ids, consumers, now, state)

        def replayed(results):
            news: dict[str, int] = {}
            for _, consumers_replayed, _ in results:
                for c in consumers_replayed:
                    news[c] = news.get(c, 0) + 1
            if news:
                self._stored({channel: news})
            return results

        return d.addCallback(replayed)

    def purge(self, channel, webhook_id) -> Deferred:
        return self._run(q.purge, channel, webhook_id)

    def prune(self, now, batch) -> Deferred:
        return self._run(q.prune, self.retention, now, batch)

    def seen_channels(self) -> Deferred:
        return self._run(q.seen_channels)

    def prune_seen(self, channel, before, limit) -> Deferred:
        return self._run(q.prune_seen, channel, before, limit)

    def ping(self) -> Deferred:
        return self._run(q.ping)
