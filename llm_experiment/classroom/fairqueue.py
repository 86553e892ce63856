"""Taking turns on a shared server: a fair queue across students, and per-student rate limits.

The upstream Ollama servers can work on ``capacity`` requests at once. When more arrive, they wait here,
one first-in-first-out queue per student, and free slots go round-robin over the students who are
waiting: a student with ten requests queued does not delay another student's first request behind all ten.
No student holds more than ``per_student`` slots at a time. Usage in the gateway::

    queue = FairQueue(capacity=4, per_student=1)
    async with queue.slot("alice") as waited_ns:   # raises QueueFull when too many are waiting
        ...                                        # forward the request upstream

:class:`RateLimits` is the other half of the policy: requests per minute and tokens per hour per student,
counted over sliding windows, answering how many seconds to put in ``Retry-After``.

Everything here runs on one asyncio event loop and never blocks it; the clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

#: Ollama's own answer (``ErrMaxQueue``) when its queue is full; the gateway sends it with status 503.
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


_REMEMBERED = 10_000  # idle students whose last turn the queue remembers


class QueueFull(Exception):
    """More than ``max_waiting`` requests are waiting: answer 503, as Ollama does, and let the client retry."""

    def __init__(self, message: str = QUEUE_FULL):
        super().__init__(message)


@dataclass(eq=False)  # compared by identity: a student's queue holds each waiter once
class _Waiter:
    student: str
    since: float
    arrived: int  # arrival order, to break ties between students never served yet
    turn: asyncio.Future[None]
    queued: bool = True  # still in its student's queue (neither served nor gone)


@dataclass
class _Student:
    waiting: deque[_Waiter] = field(default_factory=deque)
    running: int = 0
    last_served: int = -1  # the number of the last turn given to this student; -1: not served yet


class FairQueue:
    """At most ``capacity`` requests at once, ``per_student`` of them per student, turns given round-robin.

    Among the students who have a request waiting and are below ``per_student``, a free slot goes to
    the one served least recently (a student never served yet first). Over students who keep
    requests waiting, that is round-robin; each student's own requests are served in arrival order.
    A student with nothing waiting or running leaves the table, but the queue remembers their last
    turn, so coming back after a pause does not jump ahead of those who kept waiting.
    """

    def __init__(self, capacity: int, per_student: int = 1, max_waiting: int = 512,
                 clock: Callable[[], float] = monotonic):
        if capacity < 1 or per_student < 1 or max_waiting < 0:
            raise ValueError(f"FairQueue needs capacity >= 1 and per_student >= 1 and max_waiting >= 0, "
                             f"not {capacity}, {per_student}, {max_waiting}")
        self.capacity = capacity
        self.per_student = per_student
        self.max_waiting = max_waiting
        self._clock = clock
        self._students: dict[str, _Student] = {}
        self._running = 0
        self._waiting = 0
        self._turns = itertools.count()
        self._arrivals = itertools.count()
        # The last turn of students with nothing waiting or running. Without it, a student who comes back
        # after a pause would count as never served and go before one who kept requests waiting, every
        # time: with many students coming and going, a student with a backlog would hardly be served.
        self._served_before: dict[str, int] = {}

    @property
    def running(self) -> int:
        """How many slots are held right now."""
        return self._running

    @property
    def waiting(self) -> int:
        """How many requests are waiting for a slot."""
        return self._waiting

    @asynccontextmanager
    async def slot(self, student: str) -> AsyncIterator[int]:
        """Wait for ``student``'s turn, then hold one slot until the block ends; yields the nanoseconds waited.

        Raises :class:`QueueFull` at once when the request would have to wait behind ``max_waiting`` others.
        If the waiting task is cancelled (the client hung up), the request leaves the queue without a trace.
        The slot is released however the block ends, with an exception or a cancellation too.
        """
        waited_ns = await self._acquire(student)
        try:
            yield waited_ns
        finally:
            self._release(student)

    async def _acquire(self, student: str) -> int:
        entry = self._students.get(student)
        if entry is None:
            entry = self._students[student] = _Student(last_served=self._served_before.pop(student, -1))
        waiter = _Waiter(student, self._clock(), next(self._arrivals), asyncio.get_running_loop().create_future())
        entry.waiting.append(waiter)
        self._waiting += 1
        self._dispatch()
        if not waiter.turn.done() and self._waiting > self.max_waiting:
            self._forget(waiter)
            raise QueueFull()
        try:
            await waiter.turn  # returns at once, without yielding to the loop, when the turn was given above
        except asyncio.CancelledError:
            if waiter.turn.done() and not waiter.turn.cancelled():
                # The turn was given, but the cancellation reached us first: hand the slot on.
                self._release(student)
            else:
                self._forget(waiter)
            raise
        return max(0, round((self._clock() - waiter.since) * 1e9))

    def resize(self, capacity: int) -> None:
        """Change how many requests run at once (at least 1): an upstream went down, or came back.

        Requests already running keep their slots; with fewer slots, new turns wait until enough have ended.
        """
        self.capacity = max(1, capacity)
        self._dispatch()

    def _forget(self, waiter: _Waiter) -> None:
        """Take a waiter that never got its turn out of the queue (if :meth:`_dispatch` has not already)."""
        waiter.turn.cancel()
        if waiter.queued:
            waiter.queued = False
            entry = self._students[waiter.student]
            entry.waiting.remove(waiter)
            self._waiting -= 1
            self._drop_if_idle(waiter.student, entry)

    def _release(self, student: str) -> None:
        entry = self._students[student]
        entry.running -= 1
        self._running -= 1
        self._drop_if_idle(student, entry)
        self._dispatch()

    def _drop_if_idle(self, student: str, entry: _Student) -> None:
        if not entry.waiting and entry.running == 0:
            del self._students[student]
            if entry.last_served >= 0:
                self._served_before[student] = entry.last_served
                if len(self._served_before) > _REMEMBERED:  # bounded: forget the student idle the longest
                    del self._served_before[next(iter(self._served_before))]

    def _dispatch(self) -> None:
        """Give free slots to waiting students, least recently served first."""
        while self._running < self.capacity:
            ready = [(entry.last_served, entry.waiting[0].arrived, entry) for entry in self._students.values()
                     if entry.waiting and entry.running < self.per_student]
            if not ready:
                return
            entry = min(ready, key=lambda candidate: candidate[:2])[2]
            waiter = entry.waiting.popleft()
            waiter.queued = False
            self._waiting -= 1
            if waiter.turn.cancelled():
                # Its task was cancelled and has not run since to leave the queue itself: skip it.
                self._drop_if_idle(waiter.student, entry)
                continue
            entry.running += 1
            self._running += 1
            entry.last_served = next(self._turns)
            waiter.turn.set_result(None)

    def status(self) -> dict[str, Any]:
        """What the instructor's status page shows: totals, and per student how many run and wait (and how long)."""
        now = self._clock()
        students = {
            name: {"running": entry.running, "waiting": len(entry.waiting),
                   "longest_wait_s": round(now - entry.waiting[0].since, 3) if entry.waiting else 0.0}
            for name, entry in sorted(self._students.items())
        }
        return {"capacity": self.capacity, "per_student": self.per_student, "max_waiting": self.max_waiting,
                "running": self._running, "waiting": self._waiting, "students": students}


class RateLimits:
    """Per-student limits over sliding windows: ``requests_per_minute`` and ``tokens_per_hour`` (``None``: no limit).

    ``check(student)`` before a request: ``None`` lets it through and counts it, a number is how many
    seconds until it would be let through (round it up for ``Retry-After``). ``add_tokens(student, n)``
    after the answer, with its prompt and generated tokens: a request that is already running always
    finishes, so the token limit stops the next request once the hour's budget is spent.
    """

    MINUTE = 60.0
    HOUR = 3600.0

    def __init__(self, requests_per_minute: int | None = None, tokens_per_hour: int | None = None,
                 clock: Callable[[], float] = monotonic):
        self.requests_per_minute = requests_per_minute
        self.tokens_per_hour = tokens_per_hour
        self._clock = clock
        self._requests: dict[str, deque[float]] = {}  # when each request of the last minute was let through
        self._tokens: dict[str, deque[tuple[float, int]]] = {}  # (when, how many) for the last hour

    def check(self, student: str) -> float | None:
        """``None`` if ``student`` may send a request now (and count it), else the seconds to wait."""
        now = self._clock()
        requests = self._window(self._requests, student, now - self.MINUTE, lambda t: t)
        tokens = self._window(self._tokens, student, now - self.HOUR, lambda item: item[0])
        waits = []
        limit = self.requests_per_minute
        if limit is not None and len(requests) >= limit:
            # Free again when enough of the oldest requests have left the window to make room for one more.
            waits.append(requests[len(requests) - limit] + self.MINUTE - now if limit > 0 else self.MINUTE)
        if self.tokens_per_hour is not None:
            used = sum(n for _, n in tokens)
            if used >= self.tokens_per_hour:
                for when, n in tokens:  # oldest first: the wait ends when enough have left the window
                    used -= n
                    if used < self.tokens_per_hour:
                        waits.append(when + self.HOUR - now)
                        break
                else:  # a limit of 0 tokens: never (an hour is as good an answer as any)
                    waits.append(self.HOUR)
        if waits:
            self._drop_empty(student)
            return max(max(waits), 0.0)
        if limit is not None:
            self._requests.setdefault(student, deque()).append(now)
        self._drop_empty(student)
        return None

    def add_tokens(self, student: str, n: int) -> None:
        """Count ``n`` tokens (prompt + answer) against ``student``'s hourly budget."""
        if self.tokens_per_hour is not None and n > 0:
            self._tokens.setdefault(student, deque()).append((self._clock(), n))

    def usage(self, student: str) -> dict[str, int]:
        """What ``student`` used within the windows: requests in the last minute, tokens in the last hour."""
        now = self._clock()
        requests = self._window(self._requests, student, now - self.MINUTE, lambda t: t)
        tokens = self._window(self._tokens, student, now - self.HOUR, lambda item: item[0])
        self._drop_empty(student)
        return {"requests_last_minute": len(requests), "tokens_last_hour": sum(n for _, n in tokens)}

    @staticmethod
    def _window(table: dict[str, deque[Any]], student: str, start: float, when: Callable[[Any], float]) -> deque[Any]:
        """``student``'s entries newer than ``start``; older ones are dropped for good."""
        entries = table.get(student, deque())
        while entries and when(entries[0]) <= start:
            entries.popleft()
        return entries

    def _drop_empty(self, student: str) -> None:
        for table in (self._requests, self._tokens):
            if student in table and not table[student]:
                del table[student]
