"""Forgetting what the storage need not keep any longer, in the background.

Two jobs on one timer, each in short transactions so that receives are
served between them:

- the history: webhooks that the retention no longer keeps (past their
  channel's ``retention-hours``, or beyond its ``history-max``), removed by
  ``storage.prune`` batch after batch with a pause between, every
  ``interval``;
- delivery ids: those older than their channel's dedup window, every
  ``seen_interval``.  Without it the table of delivery ids grows for ever.
  The windows are read from the running config each time (the storage knows
  no config).  Ids of a channel that is no longer in the config are kept as
  long as the longest window of the config, and at least the default day: a
  channel removed by mistake and added back still knows what it received.

A failed run is logged and the next one runs as planned; a stop waits for
the batch under way.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from kwp.config import DEFAULT_DEDUP_WINDOW, Config

log = Logger()

PRUNE_INTERVAL = 5.0
# Webhooks of the history removed per transaction, and the pause between
# two: about 4,000 a second, with receives served in between (a batch costs
# a few milliseconds on a database of 300,000 webhooks).
PRUNE_BATCH = 250
PRUNE_PAUSE = 0.05
SEEN_INTERVAL = 60.0
SEEN_BATCH = 2000


class Pruner(Service):
    name = "pruner"

    def __init__(
        self,
        storage,
        config: Callable[[], Config],
        clock,
        interval: float = PRUNE_INTERVAL,
        batch: int = PRUNE_BATCH,
        pause: float = PRUNE_PAUSE,
        seen_interval: float = SEEN_INTERVAL,
        seen_batch: int = SEEN_BATCH,
    ):
        self._storage = storage
        self._config = config
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._pause = pause
        self._seen_interval = seen_interval
        self._seen_batch = seen_batch
        self._seen_due = 0.0
        self._loop = task.LoopingCall(self.prune)
        self._loop.clock = clock
        self._run: Deferred | None = None
        self.pruned = 0

    def startService(self) -> None:
        super().startService()
        self._seen_due = self._clock.seconds() + self._seen_interval
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred:
        """Stop the timer; fires once a run under way has ended its batch."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._run is None:
            return succeed(None)
        d = Deferred()
        self._run.addBoth(lambda result: d.callback(None) or result)
        return d

    @property
    def busy(self) -> bool:
        return self._run is not None

    def prune(self) -> Deferred:
        """One run: the history, then the delivery ids when they are due.
        Fires when it is over (failures logged)."""
        self._run = ensureDeferred(self._prune())

        def ended(result):
            self._run = None
            return result

        self._run.addErrback(lambda f: log.failure("pruning failed; trying again in {s}s", f, s=self._interval))
        return self._run.addBoth(ended)

    async def _prune(self) -> None:
        await self.prune_history()
        if self._clock.seconds() >= self._seen_due and self.running:
            self._seen_due = self._clock.seconds() + self._seen_interval
            await self.prune_seen()

    async def prune_history(self) -> int:
        """Prune batch after batch until one comes back short; the number pruned."""
        pruned = 0
        while True:
            n = await self._storage.prune(self._clock.seconds(), self._batch)
            pruned += n
            self.pruned += n
            if n < self._batch or not self.running:
                return pruned
            await task.deferLater(self._clock, self._pause, lambda: None)

    async def prune_seen(self) -> int:
        """Forget the delivery ids past their channel's window; the number forgotten."""
        now = self._clock.seconds()
        windows = {c.name: c.dedup_window_seconds for c in self._config().channels}
        removed_channels = max([DEFAULT_DEDUP_WINDOW, *windows.values()])
        total = 0
        for channel in await self._storage.seen_channels():
            before = now - windows.get(channel, removed_channels)
            while self.running:
                deleted = await self._storage.prune_seen(channel, before, self._seen_batch)
                total += deleted
                if deleted < self._seen_batch:
                    break
        if total:
            log.debug("forgot {n} delivery ids older than their dedup window", n=total)
        return total
