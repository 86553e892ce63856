"""Who runs when: loading and unloading models, the queue and its bound, keep_alive timers.

One generation at a time per loaded model; other requests wait their turn in arrival order.
When more than ``max_queue`` requests are waiting, new ones get 503 as from Ollama.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .models import Model
from .options import DEFAULT_KEEP_ALIVE
from .runner import Runner
from .wire import APIError

log = logging.getLogger("llm_experiment.engine")

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
#: Go's time.Now().Add(math.MaxInt64): how far away "forever" is in /api/ps (about 292 years).
FOREVER_NS = 2**63 - 1


@dataclass
class Slot:
    """A model's place in the scheduler: its runner (when loaded), its lock and its expiry."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    runner: Runner | None = None
    keep_alive: float = DEFAULT_KEEP_ALIVE
    expires_at_ns: int = 0
    timer: asyncio.TimerHandle | None = None
    users: int = 0


class Scheduler:
    def __init__(self, max_queue: int = 512, keep_alive: float = DEFAULT_KEEP_ALIVE, num_ctx: int = 4096,
                 threads: int | None = None):
        self.max_queue = max_queue
        self.default_keep_alive = keep_alive
        self.default_num_ctx = num_ctx
        self.threads = threads
        self._slots: dict[str, Slot] = {}
        self._waiting = 0

    def _slot(self, model: Model) -> Slot:
        return self._slots.setdefault(model.name, Slot())

    @asynccontextmanager
    async def use(self, model: Model, keep_alive: float | None, num_ctx: int | None) -> AsyncIterator[Runner]:
        """Wait for the model, loading it if needed; yield its :class:`Runner`.

        Raises :class:`APIError` 503 when too many requests are already waiting.
        """
        slot = self._slot(model)
        if slot.lock.locked() and self._waiting >= self.max_queue:
            raise APIError(503, QUEUE_FULL)
        self._waiting += 1
        try:
            await slot.lock.acquire()
        finally:
            self._waiting -= 1
        slot.users += 1
        try:
            if slot.timer:
                slot.timer.cancel()
                slot.timer = None
            wanted_ctx = num_ctx or self.default_num_ctx
            if slot.runner is None or slot.runner.num_ctx != wanted_ctx or slot.runner.model.path != model.path:
                if slot.runner is not None:
                    slot.runner.close()  # Ollama reloads a model when num_ctx changes
                    slot.runner = None
                slot.runner = await asyncio.to_thread(Runner, model, wanted_ctx, self.threads)
                log.info("loaded %s (num_ctx %d) in %.2f s", model.name, wanted_ctx, slot.runner.load_duration / 1e9)
            slot.keep_alive = self.default_keep_alive if keep_alive is None else keep_alive
            slot.expires_at_ns = self._expiry(slot.keep_alive)
            yield slot.runner
        finally:
            slot.users -= 1
            slot.lock.release()
            self._arm_timer(model.name, slot)

    def _expiry(self, seconds: float) -> int:
        if math.isinf(seconds):
            return time.time_ns() + FOREVER_NS
        return time.time_ns() + int(seconds * 1e9)

    def _arm_timer(self, name: str, slot: Slot) -> None:
        """After the last user, unload at once (keep_alive 0) or when keep_alive runs out."""
        if slot.users or slot.runner is None or math.isinf(slot.keep_alive):
            return
        slot.expires_at_ns = self._expiry(slot.keep_alive)
        if slot.keep_alive <= 0:
            self._unload(name, slot)
        else:
            slot.timer = asyncio.get_running_loop().call_later(slot.keep_alive, self._expire, name, slot)

    def _expire(self, name: str, slot: Slot) -> None:
        slot.timer = None
        if not slot.users and not slot.lock.locked():
            self._unload(name, slot)

    def _unload(self, name: str, slot: Slot) -> None:
        if slot.runner is not None:
            slot.runner.close()
            slot.runner = None
            log.info("unloaded %s", name)

    def unload(self, model: Model) -> None:
        """Unload ``model`` now, or as soon as its current request ends (``keep_alive: 0`` with no prompt)."""
        slot = self._slots.get(model.name)
        if slot is None:
            return
        slot.keep_alive = 0
        if not slot.users and not slot.lock.locked():
            if slot.timer:
                slot.timer.cancel()
                slot.timer = None
            self._unload(model.name, slot)

    def loaded(self) -> list[tuple[str, Runner, int]]:
        """``(model name, runner, expires_at_ns)`` for every loaded model, latest expiry first."""
        rows = [(name, s.runner, s.expires_at_ns) for name, s in self._slots.items() if s.runner is not None]
        return sorted(rows, key=lambda r: r[2], reverse=True)

    def close(self) -> None:
        for name, slot in self._slots.items():
            if slot.timer:
                slot.timer.cancel()
            self._unload(name, slot)
