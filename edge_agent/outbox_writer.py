"""Group commit for the outbox: one writer thread, one transaction (one fsync) per batch.

The inference loop must not wait for the disk on every frame. Producers `submit` messages (counts, track events)
and deletions of acknowledged rows; the writer thread commits everything that is queued in one transaction, at most
once per `linger_s` (about 50 ms) or at once when a caller waits for its message. A message therefore becomes
durable within about `linger_s` of its frame; a kill -9 inside that window loses those frames and their seqs never
existed (seq is assigned at commit, so a subscriber never sees a gap for a message that was not stored).

When a commit fails (disk full, failing flash), the batch's messages are counted per kind (`not_stored`), logged
(rate-limited) and dropped; the writer keeps going, and the producers keep producing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

from edge_agent.outbox import Outbox, OutboxError, OutboxRecord, PendingMessage

logger = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0


@dataclass
class _Item:
    message: PendingMessage
    kind: str
    future: Future[OutboxRecord] | None = None


@dataclass
class _Batch:
    items: list[_Item] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)


class OutboxWriter:
    """Owns all writes to one `Outbox` while running (reads may happen from any thread)."""

    def __init__(
        self,
        outbox: Outbox,
        on_commit: Callable[[], None] | None = None,
        linger_s: float = 0.05,
        max_batch: int = 2000,
    ) -> None:
        self.outbox = outbox
        self.linger_s = linger_s
        self.max_batch = max_batch
        self._on_commit = on_commit or (lambda: None)
        self._cond = threading.Condition()
        self._items: deque[_Item] = deque()
        self._deletes: list[int] = []
        self._busy = False  # a batch is being committed
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._not_stored: Counter[str] = Counter()
        self._failing_since: float | None = None
        self._last_log = 0.0
        self.commits = 0

    # -- producer side -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def not_stored(self) -> dict[str, int]:
        """Messages that could not be stored (disk full, I/O error), by kind, since start."""
        with self._cond:
            return dict(self._not_stored)

    def submit(self, message: PendingMessage, kind: str, wait: bool = False) -> Future[OutboxRecord] | None:
        """Queue a message; with `wait`, return a future that resolves once it is committed (or raises)."""
        future: Future[OutboxRecord] | None = Future() if wait else None
        with self._cond:
            if self._thread is None:
                raise OutboxError("outbox writer is not running")
            self._items.append(_Item(message, kind, future))
            self._cond.notify()
        return future

    def delete(self, ids: Iterable[int]) -> None:
        """Queue acknowledged row ids for deletion (committed with the next batch)."""
        id_list = list(ids)
        if not id_list:
            return
        with self._cond:
            self._deletes.extend(id_list)
            self._cond.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while self._items or self._deletes or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return not (self._items or self._deletes or self._busy)
                self._cond.wait(min(left, 0.05))
        return True

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="outbox-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Commit what is queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            self._thread = None
            left = list(self._items)
            self._items.clear()
        for item in left:  # only when the join timed out: do not leave waiters hanging
            self._count_failure([item], OutboxError("outbox writer stopped"))

    # -- writer thread ----------------------------------------------------------------------------------------
    def _take(self) -> _Batch | None:
        with self._cond:
            while not (self._items or self._deletes or self._stopping):
                self._cond.wait(0.5)
            if not (self._items or self._deletes):
                return None  # stopping and nothing left
            if not self._stopping and not any(i.future for i in self._items):
                # Linger so that one transaction carries ~linger_s of frames (counts and tracks together).
                deadline = time.monotonic() + self.linger_s
                while not self._stopping and len(self._items) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0 or any(i.future for i in self._items):
                        break
                    self._cond.wait(left)
            batch = _Batch()
            while self._items and len(batch.items) < self.max_batch:
                batch.items.append(self._items.popleft())
            batch.deletes, self._deletes = self._deletes, []
            self._busy = True
            return batch

    def _main(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._commit(batch)
            except Exception:  # noqa: BLE001 - the writer must outlive any surprise; the batch is accounted for
                logger.exception("outbox writer: unexpected error")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            self._on_commit()

    def _commit(self, batch: _Batch) -> None:
        try:
            records = self.outbox.append_many([item.message for item in batch.items], delete_ids=batch.deletes)
        except OutboxError as exc:
            self._delete_alone(batch.deletes)
            if batch.items:
                self._count_failure(batch.items, exc)
            return
        except Exception:  # noqa: BLE001 - a payload builder bug: store the others one by one, lose only it
            logger.exception("outbox writer: building a payload failed; storing the batch one message at a time")
            self._delete_alone(batch.deletes)
            for item in batch.items:
                self._commit_one(item)
            return
        self.commits += 1
        if batch.items:
            self._recovered()
        for item, record in zip(batch.items, records, strict=True):
            if item.future is not None:
                item.future.set_result(record)

    def _delete_alone(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            self.outbox.delete(ids)
        except OutboxError as exc:  # not fatal: the rows are re-sent after a restart (a duplicate, not a loss)
            logger.warning("outbox: deleting %d acknowledged message(s) failed: %s", len(ids), exc)

    def _commit_one(self, item: _Item) -> None:
        try:
            record = self.outbox.append_many([item.message])[0]
        except Exception as exc:  # noqa: BLE001 - counted and logged in _count_failure
            self._count_failure([item], exc)
            return
        if item.future is not None:
            item.future.set_result(record)

    def _count_failure(self, items: list[_Item], exc: BaseException) -> None:
        now = time.monotonic()
        with self._cond:
            for item in items:
                self._not_stored[item.kind] += 1
            totals = dict(self._not_stored)
            first = self._failing_since is None
            if first:
                self._failing_since = now
            due = first or now - self._last_log >= _LOG_EVERY_S
            if due:
                self._last_log = now
        if due:
            logger.error(
                "outbox: %d message(s) could not be stored (%s); detection goes on; not stored so far: %s",
                len(items),
                exc,
                totals,
            )
        for item in items:
            if item.future is not None:
                item.future.set_exception(exc if isinstance(exc, OutboxError) else OutboxError(str(exc)))

    def _recovered(self) -> None:
        with self._cond:
            since, self._failing_since = self._failing_since, None
            totals = dict(self._not_stored)
        if since is not None:
            logger.warning(
                "outbox: storing works again after %.1f s; not stored in total: %s", time.monotonic() - since, totals
            )
