"""Who runs when: loading and unloading models, the queue and its bound, keep_alive timers.

Up to ``parallel`` generations at a time per loaded model (``OLLAMA_NUM_PARALLEL``, default 1; the
runner decodes them together), embedding models one at a time, as Ollama; other requests wait their
turn in arrival order. A request that needs the model loaded differently (another ``num_ctx``) waits
until the model is idle, then reloads it. When more than ``max_queue`` requests are waiting, new
ones get 503 as from Ollama. At most
``max_loaded`` models stay loaded (``OLLAMA_MAX_LOADED_MODELS``): loading one more unloads the
least recently used idle model first, or waits until one is idle. Each loaded model is a
:class:`~.runner.Runner` process; a dead runner is replaced on the next request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .models import Model
from .options import DEFAULT_KEEP_ALIVE
from .runner import Runner, RunnerLimits, RunnerProcess, watch
from .wire import APIError

log = logging.getLogger("llm_experiment.engine")

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
#: Go's time.Now().Add(math.MaxInt64): how far away "forever" is in /api/ps (about 292 years).
FOREVER_NS = 2**63 - 1


@dataclass
class Slot:
    """A model's place in the scheduler: its runner (when loaded), who uses it, who waits, its expiry."""

    runner: Runner | None = None
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one user at a time (re)loads the runner
    setup: tuple[object, int] | None = None  # (model file, num_ctx) the current users need
    waiting: deque[tuple[asyncio.Future[None], tuple[object, int]]] = field(default_factory=deque)
    keep_alive: float = DEFAULT_KEEP_ALIVE
    expires_at_ns: int = 0
    timer: asyncio.TimerHandle | None = None
    users: int = 0  # requests using the model now (at most its capacity)
    capacity: int = 1  # how many may: parallel for a completion model, 1 for an embedding model
    last_used: float = 0.0
    loading: RunnerProcess | None = None  # the process loading this model right now


class Scheduler:
    def __init__(self, max_queue: int = 512, keep_alive: float = DEFAULT_KEEP_ALIVE, num_ctx: int = 4096,
                 threads: int | None = None, max_loaded: int = 3, limits: RunnerLimits | None = None,
                 parallel: int = 1):
        self.max_queue = max_queue
        self.parallel = max(1, parallel)
        self.default_keep_alive = keep_alive
        self.default_num_ctx = num_ctx
        self.threads = threads
        self.max_loaded = max(1, max_loaded)
        self.limits = limits or RunnerLimits()
        self._slots: dict[str, Slot] = {}
        self._waiting = 0
        self._idle = asyncio.Event()  # set whenever a model becomes idle
        self._spare: RunnerProcess | None = None
        self._watcher: asyncio.Task[None] | None = None

    def _slot(self, model: Model) -> Slot:
        slot = self._slots.get(model.name)
        if slot is None:
            slot = self._slots[model.name] = Slot()
        # As Ollama: an embedding model always loads with parallel 1.
        slot.capacity = 1 if "embedding" in model.capabilities else self.parallel
        return slot

    @staticmethod
    def _may_enter(slot: Slot, setup: tuple[object, int]) -> bool:
        """Whether a request needing ``setup`` may use the model now: it is idle, or it runs the same
        setup with a sequence to spare."""
        return slot.users == 0 or (slot.setup == setup and slot.users < slot.capacity)

    def _admit_waiting(self, slot: Slot) -> None:
        """Let waiting requests in, in arrival order, while the first one in line may enter."""
        while slot.waiting:
            future, setup = slot.waiting[0]
            if not future.done() and not self._may_enter(slot, setup):
                return
            slot.waiting.popleft()
            if future.done():  # its request was cancelled while it waited
                continue
            self._take_place(slot, setup)
            future.set_result(None)

    @staticmethod
    def _take_place(slot: Slot, setup: tuple[object, int]) -> None:
        slot.users += 1
        slot.setup = setup

    async def _enter(self, slot: Slot, setup: tuple[object, int]) -> None:
        """Wait for a place on the model (arrival order; 503 when too many wait already)."""
        if not slot.waiting and self._may_enter(slot, setup):
            self._take_place(slot, setup)
            return
        if self._waiting >= self.max_queue:
            raise APIError(503, QUEUE_FULL)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.waiting.append((future, setup))
        self._waiting += 1
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():  # let in just as it was cancelled: give the place back
                self._leave(slot)
            else:
                future.cancel()
                self._admit_waiting(slot)  # it may have held up the line
            raise
        finally:
            self._waiting -= 1

    def _leave(self, slot: Slot) -> None:
        slot.users -= 1
        self._admit_waiting(slot)

    # processes ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Start a spare runner process now, so the first load does not wait for Python and llama.cpp."""
        if self._spare is None or not self._spare.alive:
            self._spare = RunnerProcess(self.threads, self.limits)

    def _take_process(self) -> RunnerProcess:
        process = self._spare if self._spare is not None and self._spare.alive else None
        self._spare = None
        if process is None:
            process = RunnerProcess(self.threads, self.limits)
        return process

    def _processes(self) -> Iterator[RunnerProcess]:
        """Every runner process the watchdog must watch: loaded ones and those still loading."""
        for slot in list(self._slots.values()):
            if slot.runner is not None:
                yield slot.runner.process
            if slot.loading is not None:
                yield slot.loading

    # using a model --------------------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, model: Model, keep_alive: float | None, num_ctx: int) -> AsyncIterator[Runner]:
        """Wait for ``model``, loading it with a context of ``num_ctx`` tokens if needed; yield its runner.

        Raises :class:`APIError` 503 when too many requests are already waiting, 500 when the
        model cannot be loaded.
        """
        if self._watcher is None:
            self._watcher = asyncio.create_task(watch(self._processes))
        slot = self._slot(model)
        await self._enter(slot, (model.path, num_ctx))
        try:
            if slot.timer:
                slot.timer.cancel()
                slot.timer = None
            async with slot.load_lock:  # the first user (re)loads; the others wait for it
                runner = slot.runner
                if runner is None or not runner.alive or runner.num_ctx != num_ctx or runner.model.path != model.path:
                    if runner is not None:  # dead, or every user of the old setup has left
                        slot.runner = None
                        await asyncio.to_thread(runner.close)  # Ollama reloads a model when num_ctx changes
                    await self._make_room(slot)
                    slot.loading = self._take_process()
                    try:
                        slot.runner = await Runner.start(slot.loading, model, num_ctx, slot.capacity)
                    finally:
                        slot.loading = None
                    self.prepare()  # the next load gets a ready process
                    log.info("loaded %s (num_ctx %d, parallel %d) in %.2f s", model.name, num_ctx,
                             slot.runner.parallel, slot.runner.load_duration / 1e9)
            slot.keep_alive = self.default_keep_alive if keep_alive is None else keep_alive
            slot.expires_at_ns = self._expiry(slot.keep_alive)
            slot.last_used = time.monotonic()
            yield slot.runner
        finally:
            slot.last_used = time.monotonic()
            self._leave(slot)
            self._arm_timer(model.name, slot)
            self._idle.set()

    async def _make_room(self, wanted: Slot) -> None:
        """Unload the least recently used idle model while ``max_loaded`` are loaded; wait if all are busy."""
        while True:
            loaded = [(name, s) for name, s in self._slots.items() if s.runner is not None and s is not wanted]
            loading = sum(1 for s in self._slots.values() if s.loading is not None and s is not wanted)
            if len(loaded) + loading < self.max_loaded:
                return
            idle = [(s.runner.alive, s.last_used, name, s) for name, s in loaded  # type: ignore[union-attr]
                    if not s.users and not s.waiting]
            if idle:
                *_, name, slot = min(idle, key=lambda row: row[:2])  # dead runners first, then the oldest
                log.info("unloading %s to make room (OLLAMA_MAX_LOADED_MODELS=%d)", name, self.max_loaded)
                self._unload(name, slot)
                continue
            self._idle.clear()
            await self._idle.wait()

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
        if not slot.users and not slot.waiting:
            self._unload(name, slot)

    def _unload(self, name: str, slot: Slot) -> None:
        if slot.timer:
            slot.timer.cancel()
            slot.timer = None
        if slot.runner is not None:
            runner, slot.runner = slot.runner, None
            asyncio.get_running_loop().run_in_executor(None, runner.close)  # the process exits in the background
            log.info("unloaded %s", name)

    def unload(self, model: Model) -> None:
        """Unload ``model`` now, or as soon as its current request ends (``keep_alive: 0`` with no prompt)."""
        slot = self._slots.get(model.name)
        if slot is None:
            return
        slot.keep_alive = 0
        if not slot.users and not slot.waiting:
            self._unload(model.name, slot)

    def loaded(self) -> list[tuple[str, Runner, int]]:
        """``(model name, runner, expires_at_ns)`` for every loaded model, latest expiry first."""
        rows = [(name, s.runner, s.expires_at_ns) for name, s in self._slots.items()
                if s.runner is not None and s.runner.alive]
        return sorted(rows, key=lambda r: r[2], reverse=True)

    def close(self) -> None:
        """Stop every runner process (at shutdown)."""
        if self._watcher is not None:
            self._watcher.cancel()
        for slot in self._slots.values():
            if slot.timer:
                slot.timer.cancel()
            if slot.runner is not None:
                slot.runner.close()
                slot.runner = None
            if slot.loading is not None:
                slot.loading.kill("the engine is stopping")
        if self._spare is not None:
            self._spare.stop()
            self._spare = None
