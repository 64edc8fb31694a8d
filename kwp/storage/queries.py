"""The transactions of kwp's storage.

Each is a plain function of a DB-API cursor (``txn``) and plain values,
returning plain values, in SQL that SQLite and PostgreSQL both run, with
``?`` placeholders.  What the two databases do differently is a method or
attribute of the ``Dialect`` passed in as ``d``.

Tables: ``webhooks`` (the body, stored once), ``deliveries`` (one per
webhook and consumer it was routed to: its queue position ``seq``, claim,
lease, attempts, state), ``attempts`` (the last push attempts of each
delivery), ``consumers`` (pause and last outcomes per queue) and
``seen_deliveries`` (delivery ids for the dedup windows).  A webhook's
``done_at`` is set when its last open delivery closes; the retention prunes
by it.  A first delivery's ``seq`` is its webhook's id; a replay takes a new
number from the same sequence, so it queues at the tail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from kwp.storage import (
    DEAD,
    DELETED,
    DELIVERED,
    DUPLICATE,
    FILTERED,
    PENDING,
    QUEUE_FULL,
    Attempt,
    Delivery,
    Event,
    EventQuery,
    ForwardItem,
    NewWebhook,
    QueueState,
    QueueStats,
    Retention,
    StoredWebhook,
)

# Rows per multi-row statement and ids per IN list: SQLite has shipped with
# a limit of 999 parameters per statement.
_ROWS_PER_INSERT = 120
_IDS_PER_STATEMENT = 500
# Push attempts kept in the log of a delivery.
LOG_KEPT = 20
RESPONSE_EXCERPT = 1024

_OPEN = f"('{PENDING}', '{DEAD}')"


# What a transaction stored: channel -> consumer -> new deliveries (an empty
# mapping for a webhook that no consumer took).
News = dict[str, dict[str, int]]


class Dialect:
    """What the backends' SQL does differently."""

    # Appended to the SELECT of a claim: rows another transaction holds are skipped.
    skip_locked = ""
    # Appended to a SELECT whose rows must not change until the commit, on a
    # database that other writers share ("" where transactions are serial).
    row_lock = ""
    # Seconds an unleased pull holds its deliveries when other nodes may
    # still be streaming theirs (None: until this process stops).
    pull_hold: float | None = None

    def order_ids(self, txn) -> None:
        """Called first by each transaction that takes ids: ids must become
        visible in their order, for readers that resume after an id."""

    def allocate_ids(self, txn, count: int) -> list[int]:
        """count new numbers of the webhook id sequence, ascending."""
        raise NotImplementedError

    def insert_rows(self, txn, table: str, columns: tuple[str, ...], rows: Sequence[tuple]) -> None:
        """Insert rows (tuples of values in the order of columns) into table."""
        values = f"({_marks(len(columns))})"
        for chunk in _chunks(rows, _ROWS_PER_INSERT):
            txn.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([values] * len(chunk)),
                [v for row in chunk for v in row],
            )

    def add_deliveries(self, txn, rows: Sequence[tuple]) -> None:
        """Insert new pending deliveries: tuples of _NEW_DELIVERY's columns."""
        self.insert_rows(txn, "deliveries", _NEW_DELIVERY, rows)

    def announce(self, txn, news: News, last: int) -> None:
        """Tell other nodes, at the commit, what this transaction stored;
        ``last`` is the largest number it took from the id sequence."""

    def announce_queue(self, txn, channel: str, consumer: str, wanted: bool = False) -> None:
        """Tell other nodes, at the commit, that a queue's pause or lease
        changed, or (wanted) that this node asks for its forwarding lease."""


def stored_news(batch: Sequence[NewWebhook], results: Sequence) -> News:
    """What the webhooks of batch that got an id (in results) stored."""
    news: News = {}
    for w, result in zip(batch, results):
        if isinstance(result, int):
            counts = news.setdefault(w.channel, {})
            for route in w.routes:
                counts[route.consumer] = counts.get(route.consumer, 0) + 1
    return news


def _chunks(items: Sequence, size: int = _IDS_PER_STATEMENT) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ", ".join(["?"] * n)


# --- receive -------------------------------------------------------------------


# The columns a new webhook and a new delivery fill.
_NEW_WEBHOOK = ("id", "channel", "headers", "body", "received_at", "delivery_id", "done_at")
_NEW_DELIVERY = ("seq", "webhook_id", "channel", "consumer", "queued_at")


def _write(txn, d: Dialect, webhooks: list[NewWebhook]) -> list[int]:
    """Insert webhooks and their first deliveries; their new ids in order."""
    ids = d.allocate_ids(txn, len(webhooks))
    d.insert_rows(
        txn,
        "webhooks",
        _NEW_WEBHOOK,
        [
            (i, w.channel, w.headers_json, w.body, w.received_at, w.delivery_id, None if w.routes else w.received_at)
            for i, w in zip(ids, webhooks)
        ],
    )
    d.add_deliveries(txn, [(i, i, w.channel, r.consumer, w.received_at) for i, w in zip(ids, webhooks) for r in w.routes])
    return ids


def _open_count(txn, channel, consumer) -> int:
    txn.execute("SELECT open FROM queue_sizes WHERE channel = ? AND consumer = ?", (channel, consumer))
    row = txn.fetchone()
    return row[0] if row is not None else 0


def _queue_full(txn, w: NewWebhook) -> bool:
    return any(
        route.max_queue is not None and _open_count(txn, w.channel, route.consumer) >= route.max_queue
        for route in w.routes
    )


def insert_batch(txn, d: Dialect, batch: list[NewWebhook]) -> list:
    """The new id, DUPLICATE or QUEUE_FULL of each webhook of batch, in order.

    Webhooks without a delivery id or a queue limit wait in ``plain`` and are
    written together; one with either is decided after those before it are
    in, so that its checks see them."""
    d.order_ids(txn)
    results: list = [None] * len(batch)
    plain: list[int] = []

    def write_plain() -> None:
        for index, new_id in zip(plain, _write(txn, d, [batch[i] for i in plain])):
            results[index] = new_id
        plain.clear()

    for index, w in enumerate(batch):
        if w.delivery_id is None and all(r.max_queue is None for r in w.routes):
            plain.append(index)
            continue
        if plain:
            write_plain()
        if w.delivery_id is not None:
            txn.execute(
                "DELETE FROM seen_deliveries WHERE channel = ? AND delivery_id = ? AND seen_at < ?",
                (w.channel, w.delivery_id, w.received_at - w.dedup_window),
            )
            txn.execute(
                "INSERT INTO seen_deliveries (channel, delivery_id, seen_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (w.channel, w.delivery_id, w.received_at),
            )
            if txn.rowcount == 0:
                results[index] = DUPLICATE
                continue
        if _queue_full(txn, w):
            if w.delivery_id is not None:
                txn.execute(
                    "DELETE FROM seen_deliveries WHERE channel = ? AND delivery_id = ?", (w.channel, w.delivery_id)
                )
            results[index] = QUEUE_FULL
            continue
        results[index] = _write(txn, d, [w])[0]
    if plain:
        write_plain()
    ids = [r for r in results if isinstance(r, int)]
    if ids:
        d.announce(txn, stored_news(batch, results), max(ids))
    return results


# --- closing deliveries and the history ------------------------------------------


def _drop_webhooks(txn, ids: Sequence[int]) -> None:
    for chunk in _chunks(ids):
        marks = _marks(len(chunk))
        txn.execute(f"DELETE FROM attempts WHERE webhook_id IN ({marks})", chunk)
        txn.execute(f"DELETE FROM deliveries WHERE webhook_id IN ({marks})", chunk)
        txn.execute(f"DELETE FROM webhooks WHERE id IN ({marks})", chunk)


def _settle(txn, d: Dialect, ids: Iterable[int], now: float, retention: Retention) -> None:
    """Webhooks of ids whose last open delivery just closed are done: kept
    as history from now, or dropped at once on a channel that the retention
    does not keep.

    Where transactions run side by side, two of them closing the last two
    deliveries of a webhook could each still see the other's open: the
    webhook rows are locked first, so the second to lock them sees the
    first's closing in its next statement."""
    ids = sorted(set(ids))
    if d.row_lock:
        for chunk in _chunks(ids):
            txn.execute(f"SELECT id FROM webhooks WHERE id IN ({_marks(len(chunk))}) ORDER BY id{d.row_lock}", chunk)
    done: list[tuple[int, str]] = []
    for chunk in _chunks(ids):
        txn.execute(
            f"SELECT id, channel FROM webhooks WHERE id IN ({_marks(len(chunk))}) AND NOT EXISTS"
            f" (SELECT 1 FROM deliveries WHERE webhook_id = webhooks.id AND state IN {_OPEN})",
            chunk,
        )
        done.extend(txn.fetchall())
    _drop_webhooks(txn, [i for i, channel in done if not retention.keeps(channel)])
    kept = [i for i, channel in done if retention.keeps(channel)]
    for chunk in _chunks(kept):
        txn.execute(f"UPDATE webhooks SET done_at = ? WHERE id IN ({_marks(len(chunk))})", [now, *chunk])


def _close(txn, d: Dialect, where: str, args: tuple, state: str, now: float, retention: Retention) -> list[int]:
    """Close the open deliveries ``where`` selects as ``state``; their webhook ids."""
    txn.execute(
        f"UPDATE deliveries SET state = ?, closed_at = ?, claim = NULL, lease_until = NULL"
        f" WHERE {where} RETURNING webhook_id",
        (state, now, *args),
    )
    ids = [row[0] for row in txn.fetchall()]
    _settle(txn, d, ids, now, retention)
    return ids


def prune(txn, retention: Retention, now: float, batch: int) -> int:
    """Drop at most batch done webhooks that the retention no longer keeps:
    those beyond the channel's history-max (the newest done are kept), then
    those done longer ago than its retention, oldest first.  Channels are
    found through the index of done webhooks, one seek per channel."""
    dropped: set[int] = set()
    channel = ""
    while len(dropped) < batch:
        txn.execute(
            "SELECT channel FROM webhooks WHERE done_at IS NOT NULL AND channel > ? ORDER BY channel LIMIT 1",
            (channel,),
        )
        row = txn.fetchone()
        if row is None:
            break
        channel = row[0]
        seconds, history_max = retention.of(channel)
        txn.execute(
            "SELECT id FROM webhooks WHERE channel = ? AND done_at IS NOT NULL"
            " ORDER BY done_at DESC, id DESC LIMIT ? OFFSET ?",
            (channel, batch - len(dropped), history_max),
        )
        dropped.update(row[0] for row in txn.fetchall())
        txn.execute(
            "SELECT id FROM webhooks WHERE channel = ? AND done_at IS NOT NULL AND done_at < ?"
            " ORDER BY done_at, id LIMIT ?",
            (channel, now - seconds, batch - len(dropped)),
        )
        dropped.update(row[0] for row in txn.fetchall())
    _drop_webhooks(txn, sorted(dropped))
    return len(dropped)


# --- pull ----------------------------------------------------------------------


_PULL_COLUMNS = "d.webhook_id, w.headers, w.body, w.received_at, d.handouts"


def _pulled(txn) -> list[StoredWebhook]:
    return [StoredWebhook(i, h, bytes(b), r, n) for i, h, b, r, n in txn.fetchall()]


def _end_expired_leases(txn, channel, consumer, now) -> None:
    txn.execute(
        "UPDATE deliveries SET claim = NULL, lease_until = NULL"
        " WHERE channel = ? AND consumer = ? AND lease_until IS NOT NULL AND lease_until <= ?",
        (channel, consumer, now),
    )


def claim(txn, d: Dialect, channel, consumer, claim_id, limit, now, lease_seconds) -> list[StoredWebhook]:
    _end_expired_leases(txn, channel, consumer, now)
    txn.execute(
        f"SELECT {_PULL_COLUMNS} FROM deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
        f" WHERE d.channel = ? AND d.consumer = ? AND d.state = '{PENDING}' AND d.claim IS NULL"
        f" ORDER BY d.seq LIMIT ?{d.skip_locked}",
        (channel, consumer, limit),
    )
    rows = txn.fetchall()
    if rows:
        hold = lease_seconds if lease_seconds is not None else d.pull_hold
        lease_until = None if hold is None else now + hold
        for chunk in _chunks([r[0] for r in rows]):
            txn.execute(
                "UPDATE deliveries SET claim = ?, lease_until = ?, handouts = handouts + 1, taken_at = ?"
                f" WHERE consumer = ? AND webhook_id IN ({_marks(len(chunk))})",
                (claim_id, lease_until, now, consumer, *chunk),
            )
    return [StoredWebhook(i, h, bytes(b), r, n + 1) for i, h, b, r, n in rows]


def finish_claim(txn, d: Dialect, claim_id, now, retention) -> None:
    _close(txn, d, "claim = ?", (claim_id,), DELIVERED, now, retention)


def release_claim(txn, claim_id) -> int:
    txn.execute(
        "UPDATE deliveries SET claim = NULL, lease_until = NULL, handouts = handouts - 1 WHERE claim = ?",
        (claim_id,),
    )
    return txn.rowcount


def release_orphans(txn, d: Dialect) -> None:
    """Unleased claims belong to pulls that a stopped process never finished
    (where other nodes may be pulling, they end with their hold instead)."""
    if d.pull_hold is not None:
        return
    txn.execute(
        "UPDATE deliveries SET claim = NULL, handouts = handouts - 1 WHERE claim IS NOT NULL AND lease_until IS NULL"
    )


def ack(txn, d: Dialect, channel, consumer, ids, now, retention) -> int:
    acked = 0
    for chunk in _chunks(ids):
        acked += len(
            _close(
                txn,
                d,
                f"channel = ? AND consumer = ? AND state = '{PENDING}' AND handouts > 0"
                f" AND webhook_id IN ({_marks(len(chunk))})",
                (channel, consumer, *chunk),
                DELIVERED,
                now,
                retention,
            )
        )
    return acked


def _position(txn, channel, consumer, after) -> int:
    """The queue position after which a listing ``after`` webhook id starts:
    that webhook's own, or the id itself when it is not in the queue (ids
    and positions share one sequence)."""
    txn.execute(
        "SELECT seq FROM deliveries WHERE webhook_id = ? AND consumer = ? AND channel = ?", (after, consumer, channel)
    )
    row = txn.fetchone()
    return row[0] if row is not None else after


def list_queue(txn, channel, consumer, limit, after) -> list[StoredWebhook]:
    txn.execute(
        f"SELECT {_PULL_COLUMNS} FROM deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
        f" WHERE d.channel = ? AND d.consumer = ? AND d.state IN {_OPEN} AND d.seq > ? ORDER BY d.seq LIMIT ?",
        (channel, consumer, _position(txn, channel, consumer, after), limit),
    )
    return _pulled(txn)


def delete(txn, d: Dialect, channel, consumer, webhook_id, now, retention) -> bool:
    where = f"channel = ? AND consumer = ? AND webhook_id = ? AND state IN {_OPEN}"
    return bool(_close(txn, d, where, (channel, consumer, webhook_id), DELETED, now, retention))


def clear(txn, d: Dialect, channel, consumer, now, retention) -> int:
    where = f"channel = ? AND consumer = ? AND state IN {_OPEN}"
    return len(_close(txn, d, where, (channel, consumer), DELETED, now, retention))


# --- push ----------------------------------------------------------------------


_FORWARD_COLUMNS = (
    "d.webhook_id, w.headers, w.body, w.received_at, d.attempts, d.last_attempt_at, d.last_error,"
    " d.next_attempt_at, d.state"
)


def _forward_rows(txn) -> list[ForwardItem]:
    return [ForwardItem(i, h, bytes(b), *rest) for i, h, b, *rest in txn.fetchall()]


def forward_window(txn, channel, consumer, limit, now) -> list[ForwardItem]:
    # Deliveries under a pull's lease (a consumer that was pulled before it
    # got a forward block) wait for the lease to end.
    _end_expired_leases(txn, channel, consumer, now)
    txn.execute(
        f"SELECT {_FORWARD_COLUMNS} FROM deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
        f" WHERE d.channel = ? AND d.consumer = ? AND d.state = '{PENDING}' AND d.claim IS NULL"
        " ORDER BY d.seq LIMIT ?",
        (channel, consumer, limit),
    )
    return _forward_rows(txn)


def forward_get(txn, channel, consumer, webhook_id) -> ForwardItem | None:
    txn.execute(
        f"SELECT {_FORWARD_COLUMNS} FROM deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
        f" WHERE d.channel = ? AND d.consumer = ? AND d.webhook_id = ? AND d.state IN {_OPEN}",
        (channel, consumer, webhook_id),
    )
    rows = _forward_rows(txn)
    return rows[0] if rows else None


def _note(txn, channel, consumer, **values) -> None:
    names = ", ".join(values)
    updates = ", ".join(f"{name} = excluded.{name}" for name in values)
    txn.execute(
        f"INSERT INTO consumers (channel, consumer, {names}) VALUES (?, ?{', ?' * len(values)}) "
        f"ON CONFLICT (channel, consumer) DO UPDATE SET {updates}",
        (channel, consumer, *values.values()),
    )


def _log(txn, consumer, webhook_id, attempt: Attempt, prune: bool = True) -> None:
    """Add attempt to the log of the delivery; with prune, keep its last LOG_KEPT."""
    excerpt = attempt.response_excerpt[:RESPONSE_EXCERPT] if attempt.response_excerpt is not None else None
    txn.execute(
        "INSERT INTO attempts (webhook_id, consumer, at, status_code, error, duration_ms, response_excerpt)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (webhook_id, consumer, attempt.at, attempt.status_code, attempt.error, attempt.duration_ms, excerpt),
    )
    if not prune:
        return
    txn.execute(
        "DELETE FROM attempts WHERE webhook_id = ? AND consumer = ? AND id <= (SELECT id FROM attempts"
        " WHERE webhook_id = ? AND consumer = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (webhook_id, consumer, webhook_id, consumer, LOG_KEPT),
    )


def _count_attempt(txn, channel, consumer, webhook_id, attempt: Attempt) -> None:
    txn.execute(
        "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?, last_status = ?, last_error = ?"
        f" WHERE channel = ? AND consumer = ? AND webhook_id = ? AND state IN {_OPEN}",
        (attempt.at, attempt.status_code, attempt.error, channel, consumer, webhook_id),
    )
    _log(txn, consumer, webhook_id, attempt)


def _fenced(txn, d: Dialect, channel, consumer, token: int | None) -> bool:
    """Whether the forwarding lease of the queue still has fencing token
    ``token`` (None: no lease is in use); the row stays so until the commit,
    so a node that takes the lease over sees this transaction's outcome."""
    if token is None:
        return True
    txn.execute(
        f"SELECT 1 FROM consumers WHERE channel = ? AND consumer = ? AND lease_token = ?{d.row_lock}",
        (channel, consumer, token),
    )
    return txn.fetchone() is not None


@dataclass(frozen=True)
class Success:
    """A push attempt that succeeded, to be recorded (fenced by token as in
    ``_fenced``)."""

    channel: str
    consumer: str
    token: int | None
    webhook_id: int
    attempt: Attempt


def forward_succeeded(txn, d: Dialect, batch: Sequence[Success], retention) -> list[bool]:
    """Record each success of batch: its delivery is delivered and the
    attempt logged; False for those whose queue's lease has moved on
    (nothing of theirs written)."""
    fenced: dict[tuple, bool] = {}
    closed: list[int] = []
    last_success: dict[tuple[str, str], float] = {}
    for s in batch:
        key = (s.channel, s.consumer, s.token)
        if key not in fenced:
            fenced[key] = _fenced(txn, d, *key)
        if not fenced[key]:
            continue
        a = s.attempt
        txn.execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?, last_status = ?, last_error = ?,"
            f" state = '{DELIVERED}', closed_at = ?, claim = NULL, lease_until = NULL"
            f" WHERE channel = ? AND consumer = ? AND webhook_id = ? AND state IN {_OPEN} RETURNING attempts",
            (a.at, a.status_code, a.error, a.at, s.channel, s.consumer, s.webhook_id),
        )
        row = txn.fetchone()
        if row is not None:
            closed.append(s.webhook_id)
        _log(txn, s.consumer, s.webhook_id, a, prune=row is None or row[0] > LOG_KEPT)
        queue = (s.channel, s.consumer)
        last_success[queue] = max(a.at, last_success.get(queue, a.at))
    if closed:
        _settle(txn, d, closed, max(last_success.values()), retention)
    for (channel, consumer), at in last_success.items():
        _note(txn, channel, consumer, last_success_at=at)
    return [fenced[(s.channel, s.consumer, s.token)] for s in batch]


def forward_failed(txn, d: Dialect, channel, consumer, webhook_id, attempt: Attempt, next_attempt_at, state, token=None) -> bool:
    if not _fenced(txn, d, channel, consumer, token):
        return False
    _count_attempt(txn, channel, consumer, webhook_id, attempt)
    txn.execute(
        "UPDATE deliveries SET next_attempt_at = ?, state = ?"
        f" WHERE channel = ? AND consumer = ? AND webhook_id = ? AND state IN {_OPEN}",
        (next_attempt_at, state, channel, consumer, webhook_id),
    )
    _note(txn, channel, consumer, last_error_at=attempt.at, last_error_message=attempt.error)
    return True


# --- queue state and figures -------------------------------------------------------


def queue_state(txn, channel, consumer) -> QueueState:
    txn.execute(
        "SELECT paused, last_success_at, last_error_at, last_error_message FROM consumers"
        " WHERE channel = ? AND consumer = ?",
        (channel, consumer),
    )
    row = txn.fetchone()
    if row is None:
        return QueueState()
    return QueueState(bool(row[0]), *row[1:])


def set_paused(txn, d: Dialect, channel, consumer, paused) -> None:
    _note(txn, channel, consumer, paused=int(paused))
    d.announce_queue(txn, channel, consumer)


# --- the forwarding lease ---------------------------------------------------------


def acquire_lease(txn, channel, consumer, owner, now, seconds) -> int | None:
    """The fencing token of the queue's forwarding lease, now held by owner
    until now + seconds; None while another owner holds it.  A lease that
    changes owner gets a larger token, so writes fenced with an older token
    fail from then on."""
    txn.execute("INSERT INTO consumers (channel, consumer) VALUES (?, ?) ON CONFLICT DO NOTHING", (channel, consumer))
    txn.execute(
        "UPDATE consumers SET lease_token = lease_token + CASE WHEN lease_owner = ? THEN 0 ELSE 1 END,"
        " lease_owner = ?, lease_until = ?"
        " WHERE channel = ? AND consumer = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_until <= ?)"
        " RETURNING lease_token",
        (owner, owner, now + seconds, channel, consumer, owner, now),
    )
    row = txn.fetchone()
    return None if row is None else row[0]


def renew_lease(txn, channel, consumer, owner, token, now, seconds) -> QueueState | None:
    """The queue's state when owner still holds the lease with token, now
    until now + seconds; None when it was lost."""
    txn.execute(
        "UPDATE consumers SET lease_until = ? WHERE channel = ? AND consumer = ? AND lease_owner = ? AND lease_token = ?"
        " RETURNING paused, last_success_at, last_error_at, last_error_message",
        (now + seconds, channel, consumer, owner, token),
    )
    row = txn.fetchone()
    return None if row is None else QueueState(bool(row[0]), *row[1:])


def want_lease(txn, d: Dialect, channel, consumer) -> None:
    d.announce_queue(txn, channel, consumer, wanted=True)


def release_lease(txn, d: Dialect, channel, consumer, owner, token) -> None:
    txn.execute(
        "UPDATE consumers SET lease_owner = NULL, lease_until = NULL"
        " WHERE channel = ? AND consumer = ? AND lease_owner = ? AND lease_token = ?",
        (channel, consumer, owner, token),
    )
    if txn.rowcount:
        d.announce_queue(txn, channel, consumer)


def queue(txn, channel, consumer, limit, after) -> tuple[QueueState, int, list[ForwardItem]]:
    state = queue_state(txn, channel, consumer)
    size = _open_count(txn, channel, consumer)
    txn.execute(
        f"SELECT {_FORWARD_COLUMNS} FROM deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id"
        f" WHERE d.channel = ? AND d.consumer = ? AND d.state IN {_OPEN} AND d.seq > ? ORDER BY d.seq LIMIT ?",
        (channel, consumer, _position(txn, channel, consumer, after), limit),
    )
    return state, size, _forward_rows(txn)


def holds(txn, channel, consumer) -> bool:
    txn.execute(
        f"SELECT 1 FROM deliveries WHERE channel = ? AND consumer = ? AND state IN {_OPEN} LIMIT 1",
        (channel, consumer),
    )
    return txn.fetchone() is not None


def queue_stats(txn) -> dict[tuple[str, str], QueueStats]:
    """Pending and dead deliveries of every queue that has any, and when
    the head of each was queued: the counts kept by triggers, then one index
    seek per queue."""
    txn.execute("SELECT channel, consumer, open, dead FROM queue_sizes WHERE open > 0")
    counts = txn.fetchall()
    stats = {}
    for channel, consumer, open_count, dead in counts:
        txn.execute(
            f"SELECT queued_at FROM deliveries WHERE channel = ? AND consumer = ? AND state IN {_OPEN}"
            f" AND state = '{PENDING}' ORDER BY seq LIMIT 1",
            (channel, consumer),
        )
        head = txn.fetchone()
        stats[(channel, consumer)] = QueueStats(open_count - dead, head[0] if head else None, dead)
    return stats


# --- history -------------------------------------------------------------------


_DELIVERY_COLUMNS = (
    "webhook_id, consumer, state, attempts, handouts, taken_at,"
    f" CASE WHEN state = '{DELIVERED}' THEN closed_at END, next_attempt_at, last_status, last_error"
)


def _deliveries(txn, ids: Sequence[int]) -> dict[int, list[Delivery]]:
    found: dict[int, list[Delivery]] = {}
    for chunk in _chunks(ids):
        txn.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id IN ({_marks(len(chunk))}) ORDER BY consumer",
            chunk,
        )
        for webhook_id, *fields in txn.fetchall():
            found.setdefault(webhook_id, []).append(Delivery(*fields))
    return found


def _state_condition(state: str | None, consumer: str | None) -> tuple[str, list]:
    """SQL over ``w`` (webhooks) for an event's state and consumer."""
    if consumer is None:
        if state is None:
            return "", []
        if state == FILTERED:
            return " AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id)", []
        if state == PENDING:
            return f" AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id AND d.state = '{PENDING}')", []
        if state == DEAD:
            return (
                f" AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id AND d.state = '{DEAD}')"
                f" AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id AND d.state = '{PENDING}')",
                [],
            )
        return " AND w.done_at IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id)", []
    mine = "SELECT 1 FROM deliveries AS d WHERE d.webhook_id = w.id AND d.consumer = ?"
    if state is None:
        return f" AND EXISTS ({mine})", [consumer]
    if state == FILTERED:
        return f" AND NOT EXISTS ({mine})", [consumer]
    states = (DELIVERED, DELETED) if state == DELIVERED else (state,)
    return f" AND EXISTS ({mine} AND d.state IN ({_marks(len(states))}))", [consumer, *states]


def events(txn, channel, query: EventQuery, limit) -> list[Event]:
    where = "w.channel = ?"
    args: list = [channel]
    for clause, value in (
        (" AND w.id < ?", query.before),
        (" AND w.received_at >= ?", query.since),
        (" AND w.received_at <= ?", query.until),
    ):
        if value is not None:
            where += clause
            args.append(value)
    condition, extra = _state_condition(query.state, query.consumer)
    txn.execute(
        f"SELECT w.id, w.received_at, w.headers, w.body FROM webhooks AS w WHERE {where}{condition}"
        " ORDER BY w.id DESC LIMIT ?",
        (*args, *extra, limit),
    )
    rows = txn.fetchall()
    deliveries = _deliveries(txn, [row[0] for row in rows])
    return [Event(i, r, h, bytes(b), tuple(deliveries.get(i, ()))) for i, r, h, b in rows]


def event(txn, channel, webhook_id) -> Event | None:
    txn.execute("SELECT received_at, headers, body FROM webhooks WHERE channel = ? AND id = ?", (channel, webhook_id))
    row = txn.fetchone()
    if row is None:
        return None
    txn.execute(
        "SELECT consumer, at, status_code, error, duration_ms, response_excerpt FROM attempts"
        " WHERE webhook_id = ? ORDER BY id",
        (webhook_id,),
    )
    logs: dict[str, list[Attempt]] = {}
    for consumer, *fields in txn.fetchall():
        logs.setdefault(consumer, []).append(Attempt(*fields))
    deliveries = tuple(
        replace(delivery, log=tuple(logs.get(delivery.consumer, ())))
        for delivery in _deliveries(txn, [webhook_id]).get(webhook_id, ())
    )
    received_at, headers, body = row
    return Event(webhook_id, received_at, headers, bytes(body), deliveries)


def events_after(txn, channel, after, limit, consumer) -> list[Event]:
    condition, extra = _state_condition(None, consumer)
    txn.execute(
        f"SELECT w.id, w.received_at, w.headers, w.body FROM webhooks AS w WHERE w.channel = ? AND w.id > ?{condition}"
        " ORDER BY w.id LIMIT ?",
        (channel, after, *extra, limit),
    )
    return [Event(i, r, h, bytes(b)) for i, r, h, b in txn.fetchall()]


def replay(txn, d: Dialect, channel, ids, consumers, now, state) -> list[tuple[int, list[str], list[str]]]:
    d.order_ids(txn)
    results = []
    news: dict[str, int] = {}
    last = 0
    for webhook_id in sorted(set(ids)):
        txn.execute("SELECT 1 FROM webhooks WHERE channel = ? AND id = ?", (channel, webhook_id))
        if txn.fetchone() is None:
            continue
        txn.execute("SELECT consumer, state FROM deliveries WHERE webhook_id = ?", (webhook_id,))
        current = dict(txn.fetchall())
        candidates = current if consumers is None else consumers
        targets = sorted(c for c in candidates if state is None or current.get(c) == state)
        already = [c for c in targets if current.get(c) == PENDING]
        replayed = [c for c in targets if current.get(c) != PENDING]
        if replayed:
            seqs = d.allocate_ids(txn, len(replayed))
            last = max(last, *seqs)
            for c in replayed:
                news[c] = news.get(c, 0) + 1
            txn.execute(
                f"DELETE FROM deliveries WHERE webhook_id = ? AND consumer IN ({_marks(len(replayed))})",
                (webhook_id, *replayed),
            )
            d.add_deliveries(txn, [(seq, webhook_id, channel, c, now) for seq, c in zip(seqs, replayed)])
            txn.execute("UPDATE webhooks SET done_at = NULL WHERE id = ?", (webhook_id,))
        results.append((webhook_id, replayed, already))
    if news:
        d.announce(txn, {channel: news}, last)
    return results


def purge(txn, channel, webhook_id) -> bool:
    txn.execute("SELECT 1 FROM webhooks WHERE channel = ? AND id = ?", (channel, webhook_id))
    if txn.fetchone() is None:
        return False
    _drop_webhooks(txn, [webhook_id])
    return True


def seen_channels(txn) -> list[str]:
    # One index seek per channel, however many ids each has.
    channels: list[str] = []
    while True:
        txn.execute(
            "SELECT channel FROM seen_deliveries WHERE channel > ? ORDER BY channel LIMIT 1",
            (channels[-1] if channels else "",),
        )
        row = txn.fetchone()
        if row is None:
            return channels
        channels.append(row[0])


def prune_seen(txn, channel, before, limit) -> int:
    txn.execute(
        "SELECT delivery_id FROM seen_deliveries WHERE channel = ? AND seen_at < ? LIMIT ?", (channel, before, limit)
    )
    ids = [row[0] for row in txn.fetchall()]
    for chunk in _chunks(ids):
        txn.execute(
            f"DELETE FROM seen_deliveries WHERE channel = ? AND delivery_id IN ({_marks(len(chunk))})",
            (channel, *chunk),
        )
    return len(ids)


def ping(txn) -> None:
    txn.execute("SELECT 1")
