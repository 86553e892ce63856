"""A model runner process, seen from the server: start it, feed it jobs, watch it, kill it.

As in Ollama, native model code never runs in the server: each loaded model lives in its own
child process (:mod:`.runner_main`). Its events come back over a pipe, read by a thread and
handed to the event loop. A runner that crashes, aborts, runs out of its memory cap or stops
answering past a deadline is killed; the request it was serving gets a clear error, and the
scheduler starts a fresh runner for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

import anyio

from .models import Model
from .runner_main import MEMORY_ENV
from .wire import APIError

log = logging.getLogger("llm_experiment.engine")

#: What Ollama answers when its runner dies during a request.
CRASHED = ("model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
           "check the engine's log for details")


@dataclass
class RunnerLimits:
    """How long a runner may stay silent, and how much memory it may take."""

    load_timeout: float = 300.0  # Ollama's OLLAMA_LOAD_TIMEOUT default: 5 minutes
    stall_timeout: float = 120.0  # no token or progress for this long: the runner is stuck
    grammar_timeout: float = 5.0  # turning a JSON schema into a grammar takes milliseconds, unless it loops
    memory: int = 8 << 30  # heap cap (RLIMIT_DATA), bytes; 0 = none
    #: The program a runner process runs (it speaks on its standard input and output). Tests put a fake here.
    command: tuple[str, ...] = (sys.executable, "-m", "llm_experiment.engine.runner_main")


class RunnerProcess:
    """A child process with llama.cpp imported, waiting for a model (or serving one)."""

    def __init__(self, threads: int | None, limits: RunnerLimits):
        self.limits = limits
        env = dict(os.environ)
        if limits.memory:
            env[MEMORY_ENV] = str(limits.memory)
        # llama.cpp's OpenMP threads spin while they wait for work. On a machine with few cores that
        # also runs Jupyter, a browser or a test suite, spinning threads fight the others for the CPU.
        # A short spin, then sleep, keeps nearly all of the speed on an idle machine and most of it on
        # a busy one. Measured on 2 cores, decode tok/s: idle 65.6 (default spin) / 62.5 (this) / 41.3
        # (no spin); with two busy processes beside it 17.3 / 29.6 / 29.8. Set yours to override.
        env.setdefault("GOMP_SPINCOUNT", "20000")
        # Commands go to its standard input, events come back on its standard output (its standard
        # error is the server's, so llama.cpp's complaints land in the engine's log).
        self.proc = subprocess.Popen(list(limits.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._to_child: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        self.threads = threads
        self.exit_reason = ""
        self._write_lock = threading.Lock()
        self._events: asyncio.Queue[dict[str, Any]] | None = None  # events of no job (loading)
        self._routes: dict[int, asyncio.Queue[dict[str, Any]]] = {}  # each running job's own events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: threading.Thread | None = None
        self.last_event = time.monotonic()
        self.phase = ""  # what the runner is doing now: "load", "grammar", "run" or "" (idle)
        self._stopping = False  # we asked it to end: its exit is no news

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self.exit_reason

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading events into ``loop`` (once)."""
        if self._reader is None:
            self._loop = loop
            self._events = asyncio.Queue()
            self._reader = threading.Thread(target=self._read, name=f"runner-{self.proc.pid}", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        """Thread: every line from the runner becomes an event on the loop; the end of the pipe, its exit."""
        assert self._loop is not None
        with self.proc.stdout as pipe:  # type: ignore[union-attr]
            for line in pipe:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self._post(self._deliver, event)
        self._post(self._exited, self.proc.wait())

    def _post(self, callback: Any, arg: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is shutting down
            self._loop.call_soon_threadsafe(callback, arg)

    def _deliver(self, event: dict[str, Any]) -> None:
        self.last_event = time.monotonic()
        if event.get("ev") == "phase":
            self.phase = event["phase"]
            return
        if self.phase == "grammar":
            self.phase = "run"
        assert self._events is not None
        self._routes.get(event.get("id"), self._events).put_nowait(event)  # type: ignore[arg-type]

    def _exited(self, code: int) -> None:
        reason = self.exit_reason or _describe_exit(code)
        self.exit_reason = reason
        log.log(logging.INFO if self._stopping else logging.WARNING, "runner %d stopped: %s", self.proc.pid, reason)
        for events in [self._events, *self._routes.values()]:
            if events is not None:
                events.put_nowait({"ev": "exit", "message": reason})

    def send(self, command: dict[str, Any]) -> None:
        """Write one command (blocking while the pipe is full: call it from a thread for big ones)."""
        data = (json.dumps(command, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")
        with self._write_lock:
            try:
                self._to_child.write(data)
                self._to_child.flush()
            except (OSError, ValueError):
                pass  # the runner is gone (or its pipe closed); its exit event tells the waiting request

    async def next_event(self) -> dict[str, Any]:
        assert self._events is not None
        return await self._events.get()

    def deadline(self) -> float | None:
        """Seconds of silence allowed in the current phase, or ``None`` while idle."""
        return {"load": self.limits.load_timeout, "grammar": self.limits.grammar_timeout,
                "run": self.limits.stall_timeout}.get(self.phase)

    def kill(self, reason: str) -> None:
        """Kill the process now; waiting requests get ``reason``."""
        if self.proc.poll() is None:
            self.exit_reason = self.exit_reason or reason
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def stop(self) -> None:
        """End the process: close its command pipe (it exits by itself), and kill it if it lingers."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._to_child.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill("stopped")
        if self._reader is None:  # never attached: nobody else closes this end
            with contextlib.suppress(OSError):
                self.proc.stdout.close()  # type: ignore[union-attr]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by signal {name}"
    return f"exit status {code}"


class Runner:
    """One loaded model in its own process, running up to :attr:`parallel` jobs at once (the scheduler
    sees to it; the runner decodes them together)."""

    def __init__(self, process: RunnerProcess, model: Model, num_ctx: int):
        self.process = process
        self.model = model
        self.num_ctx = num_ctx
        self.load_duration = 0
        self.n_vocab = 0
        self.ready_ns = 0  # time.perf_counter_ns() when the model was loaded
        self.parallel = 1
        self.running = 0  # jobs in progress
        self._next_id = 0

    @classmethod
    async def start(cls, process: RunnerProcess, model: Model, num_ctx: int, parallel: int = 1) -> Runner:
        """Load ``model`` in ``process`` for ``parallel`` jobs at once; raise :class:`APIError` 500 if it
        cannot be loaded."""
        runner = cls(process, model, num_ctx)
        process.attach(asyncio.get_running_loop())
        process.phase = "load"
        process.last_event = time.monotonic()
        try:
            await asyncio.to_thread(process.send, {"op": "load", "path": str(model.path), "num_ctx": num_ctx,
                                                   "threads": process.threads,
                                                   "embedding": "embedding" in model.capabilities,
                                                   "parallel": parallel})
            event = await process.next_event()
        except BaseException:  # the request was cancelled while loading: no half-loaded process stays behind
            process.kill("the load was abandoned")
            raise
        process.phase = ""
        if event["ev"] != "loaded":
            message = event.get("message", "")
            process.stop()
            raise APIError(500, f"llama runner process has terminated: {message}")
        runner.load_duration = event["load_duration"]
        runner.n_vocab = event["n_vocab"]
        runner.parallel = event.get("parallel", 1)
        runner.ready_ns = time.perf_counter_ns()
        return runner

    @property
    def alive(self) -> bool:
        return self.process.alive

    async def run(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send ``job``; yield its events (``piece``, ``progress``) up to and including the last one
        (``done``, or ``error`` with a status and message).

        Closing the iterator early cancels the job and waits until the runner has stopped it, so
        its sequence is free when this returns.
        """
        self._next_id += 1
        jid = self._next_id
        process = self.process
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        process._routes[jid] = events  # before anything can happen to the process: its exit reaches us
        if not process.alive:
            del process._routes[jid]
            yield {"ev": "error", "status": 500, "message": f"{CRASHED}: {process.exit_reason}"}
            return
        if not self.running:  # the watchdog times silence from the start of work, not from the last job
            process.phase = "run"
            process.last_event = time.monotonic()
        self.running += 1
        finished = False
        try:
            await asyncio.to_thread(process.send, {"op": "run", "id": jid, **job})
            while True:
                event = await events.get()
                if event["ev"] == "exit":
                    finished = True
                    yield {"ev": "error", "status": 500, "message": f"{CRASHED}: {event['message']}"}
                    return
                finished = event["ev"] in ("done", "error")
                yield event
                if finished:
                    return
        finally:
            if not finished:
                await self._cancel(jid, events)
            del process._routes[jid]
            self.running -= 1
            if not self.running:
                process.phase = ""

    async def _cancel(self, jid: int, events: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop job ``jid`` after its current token and wait for the runner to confirm (or die)."""
        process = self.process
        with anyio_shield():
            await asyncio.to_thread(process.send, {"op": "cancel", "id": jid})
            while process.alive or not events.empty():
                event = await events.get()
                if event["ev"] in ("exit", "done", "error"):
                    if event["ev"] == "done":
                        log.info("generation stopped after %d tokens: the client went away", event["eval_count"])
                    return

    def close(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def anyio_shield() -> Iterator[None]:
    """Finish cleaning up even when the surrounding task is being cancelled."""
    with anyio.CancelScope(shield=True):
        yield


async def watch(processes: Any, interval: float = 1.0) -> None:
    """Kill runners that stay silent past their phase's deadline (a loop or a hang in native code)."""
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        for process in list(processes()):
            limit = process.deadline()
            if limit is not None and process.alive and now - process.last_event > limit:
                log.error("runner %d silent for %.0f s while in %s: killing it", process.proc.pid,
                          now - process.last_event, process.phase)
                process.kill(f"no answer for {limit:.0f} s (phase {process.phase}); the runner was killed")
