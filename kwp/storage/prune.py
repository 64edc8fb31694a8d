"""Forgetting delivery ids once their channel's dedup window is over.

Without it the table of delivery ids grows for ever.  ``Pruner`` runs on a
timer, reads the windows from the running config each time (the storage
knows no config) and deletes in short transactions of ``batch`` rows, so
that receives are served between them.  Ids of a channel that is no longer
in the config are kept as long as the longest window of the config, and at
least the default day: a channel removed by mistake and added back still
knows what it received.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kwp.config import DEFAULT_DEDUP_WINDOW, Config

log = Logger()

PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 2000


class Pruner(Service):
    name = "pruner"

    def __init__(
        self,
        storage,
        config: Callable[[], Config],
        clock,
        interval: float = PRUNE_INTERVAL,
        batch: int = PRUNE_BATCH,
    ):
        self._storage = storage
        self._config = config
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._loop = LoopingCall(self.prune)
        self._loop.clock = clock
        self._busy = False
        self._idle: list[Deferred] = []

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred:
        """Stop the timer; fires once a run under way has ended its batch."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if not self._busy:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        return d

    def prune(self) -> Deferred:
        """One run over every channel; fires with the number of ids
        forgotten, or None after a failure (logged, and the timer goes on)."""
        self._busy = True
        d = ensureDeferred(self._prune())
        d.addErrback(lambda f: log.failure("pruning delivery ids failed; trying again in {s}s", f, s=self._interval))
        return d.addBoth(self._ended)

    def _ended(self, result):
        self._busy = False
        waiters, self._idle = self._idle, []
        for d in waiters:
            d.callback(None)
        return result

    async def _prune(self) -> int:
        now = self._clock.seconds()
        windows = {c.name: c.dedup_window_seconds for c in self._config().channels}
        removed_channels = max([DEFAULT_DEDUP_WINDOW, *windows.values()])
        total = 0
        for channel in await self._storage.seen_channels():
            before = now - windows.get(channel, removed_channels)
            while self.running:
                deleted = await self._storage.prune_seen(channel, before, self._batch)
                total += deleted
                if deleted < self._batch:
                    break
        if total:
            log.debug("forgot {n} delivery ids older than their dedup window", n=total)
        return total
