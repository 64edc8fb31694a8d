"""In-process wake-ups: "webhooks arrived in queue K", for long-polls and forwarders.

A key names one queue: the channel's name today; when a channel has several
consumers, each queue's key is ``(channel, consumer)``.  Two kinds of waiters:

- ``wait(key)``: woken by every ``fire(key)``; a forwarder, which reads its
  queue itself whatever the number of webhooks.
- ``wait_for_item(key)``: woken by one webhook, oldest waiter first; a
  long-poll.  ``fire(key, n)`` wakes at most n of them, so the cost of a
  wake does not grow with the number of long-polls waiting.  A waiter woken
  for a webhook that it then does not take passes the wake on with
  ``fire(key)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from twisted.internet.defer import Deferred


class Notifier:
    def __init__(self):
        self._watchers: dict[Hashable, set[Deferred]] = {}
        self._takers: dict[Hashable, OrderedDict[Deferred, None]] = {}
        self.closed = False

    def wait(self, key: Hashable) -> Deferred:
        """A Deferred that fires with None at the next fire(key).

        Cancelling it (a client that went away, a time-out) removes the waiter
        at once, so an abandoned wait holds nothing."""
        watchers = self._watchers.setdefault(key, set())
        d = Deferred(watchers.discard)
        watchers.add(d)
        return d

    def wait_for_item(self, key: Hashable) -> Deferred:
        """A Deferred that fires with None when a fire(key) hands it one
        webhook; cancelling it removes the waiter at once."""
        takers = self._takers.setdefault(key, OrderedDict())

        def cancel(d):
            takers.pop(d, None)

        d = Deferred(cancel)
        takers[d] = None
        return d

    def fire(self, key: Hashable, items: int = 1) -> None:
        """items webhooks arrived (or came back) in queue key: wake every
        wait(key) and the ``items`` oldest wait_for_item(key)."""
        woken = list(self._watchers.pop(key, ()))
        takers = self._takers.get(key)
        if takers is not None:
            while takers and items > 0:
                woken.append(takers.popitem(last=False)[0])
                items -= 1
            if not takers:
                del self._takers[key]
        for d in woken:
            d.callback(None)

    def close(self) -> None:
        """Wake every waiter for good: the process is stopping."""
        self.closed = True
        for key in list(self._watchers):
            self.fire(key, 0)
        for key, takers in list(self._takers.items()):
            self.fire(key, len(takers))

    def waiting(self, key: Hashable) -> int:
        return len(self._watchers.get(key, ())) + len(self._takers.get(key, ()))
