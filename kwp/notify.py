"""In-process signal "something arrived on channel X" for long-polls and forwarders."""

from __future__ import annotations

from collections import defaultdict

from twisted.internet.defer import Deferred


class Notifier:
    def __init__(self):
        self._waiters: dict[str, set[Deferred]] = defaultdict(set)
        self.closed = False

    def wait(self, channel: str) -> Deferred:
        """A Deferred that fires with None at the next fire(channel).

        Cancelling it (a client that went away, a time-out) removes the waiter
        at once, so an abandoned wait holds nothing."""
        waiters = self._waiters[channel]

        def cancel(d):
            waiters.discard(d)

        d = Deferred(cancel)
        waiters.add(d)
        return d

    def fire(self, channel: str) -> None:
        waiters = self._waiters.pop(channel, ())
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """Wake every waiter for good: the process is stopping."""
        self.closed = True
        for channel in list(self._waiters):
            self.fire(channel)

    def waiting(self, channel: str) -> int:
        return len(self._waiters.get(channel, ()))
