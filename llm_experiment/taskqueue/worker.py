"""A worker: pulls tasks from the task queue's manager, runs them on an Ollama server, posts the results.

The worker only makes outgoing connections, so it runs where the model is even when nothing can connect
to that machine (a lab's GPU box, a laptop behind a firewall)::

    worker = Worker("http://queue-host:5000", ollama="http://127.0.0.1:11434", key="llmx_...")
    worker.run()    # until worker.stop(), or Ctrl-C with `llm-experiment worker`

Each of its ``concurrency`` slots loops: take a task (``GET /task``), waiting longer and longer while the queue
is empty; stream the answer from Ollama (``/api/generate`` for a prompt, ``/api/chat`` for messages) while a
heartbeat keeps the lease alive; post the result with the timing figures, or the error. When the manager
cannot be reached (restarting, say), the worker keeps trying: a result is posted again until the manager
answers, which is safe because the manager stores one result per lease. When its own Ollama does not
answer, the worker gives the task back without spending an attempt, and waits before taking another.

:meth:`Worker.stop` stops taking tasks and lets the current ones finish; ``stop(now=True)`` cancels them and
gives them back to the queue.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from ..client import Stream, chat, generate
from ..errors import OllamaError
from ..hosts import server_url

log = logging.getLogger(__name__)

STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
         "eval_duration", "done_reason")


class Worker:
    """Runs tasks from the manager at ``queue`` on the Ollama server ``ollama`` (``OLLAMA_HOST`` form).

    ``key`` is the worker's key (``llm-experiment classroom add-worker NAME``); ``None`` for a queue with
    open access. An Ollama behind the classroom gateway takes its key from ``OLLAMA_API_KEY``.
    ``idle_wait`` is the longest pause between two polls of an empty queue.
    """

    def __init__(self, queue: str, ollama: str | None = None, *, key: str | None = None, concurrency: int = 1,
                 idle_wait: float = 5.0, say: Callable[[str], None] = log.info):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queue = queue.rstrip("/")
        self.ollama = server_url(ollama)
        self.concurrency, self.idle_wait, self.say = concurrency, idle_wait, say
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.stopping = threading.Event()  # take no more tasks
        self.cancelling = threading.Event()  # and give the current ones back
        self.done = 0  # results stored by this worker
        self._ollama_wait = 2.0  # seconds to wait after finding Ollama down; doubles up to a minute
        self._count = threading.Lock()

    # running -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Work until :meth:`stop` is called; returns when every slot has finished."""
        slots = [threading.Thread(target=self._slot, name=f"worker-slot-{n}", daemon=True)
                 for n in range(self.concurrency)]
        for slot in slots:
            slot.start()
        for slot in slots:
            while slot.is_alive():
                slot.join(0.2)  # short joins: the main thread stays responsive to Ctrl-C

    def stop(self, now: bool = False) -> None:
        """Take no more tasks; finish the current ones, or with ``now`` cancel them and give them back."""
        self.stopping.set()
        if now:
            self.cancelling.set()

    def _slot(self) -> None:
        wait = 0.1
        while not self.stopping.is_set():
            try:
                task = self.take()
            except requests.RequestException as exc:
                self.say(f"the queue at {self.queue} does not answer ({type(exc).__name__}); trying again")
                task, wait = None, max(wait, 1.0)
            except PermissionError as exc:  # a refused key will not get better by asking again
                self.say(str(exc))
                self.stop()
                return
            if task is None:
                self.stopping.wait(wait * random.uniform(0.8, 1.2))  # jitter: many idle workers do not poll in step
                wait = min(wait * 2, self.idle_wait)
                continue
            wait = 0.1
            try:
                self.work_on(task)
            except Exception as exc:  # noqa: BLE001 - a malformed task or a bug: the slot lives on
                self.say(f"task {task.get('task_id')!r} could not be run: {exc!r}; its lease will run out")

    # one task ----------------------------------------------------------------------------------

    def take(self) -> dict[str, Any] | None:
        """Lease the next task, or ``None`` when the queue is empty."""
        response = self.session.get(f"{self.queue}/task", timeout=(5, 30))
        if response.status_code == 204:
            return None
        if response.status_code in (401, 403):
            raise PermissionError(f"the queue refused this worker's key: {_error(response)}")
        response.raise_for_status()
        return response.json()

    def work_on(self, task: dict[str, Any]) -> None:
        """Run one leased task and report its outcome to the manager."""
        task_id = task["task_id"]
        self.say(f"task {task_id}: {task['model']}, attempt {task.get('attempt', 1)}")
        lost = threading.Event()
        beating = threading.Thread(target=self._heartbeat, args=(task, lost), daemon=True)
        beating.start()
        try:
            text, stats = self.answer(task, lambda: lost.is_set() or self.cancelling.is_set())
        except InterruptedError:
            if lost.is_set():  # the manager gave the task to another worker: its result would be refused
                self.say(f"task {task_id}: stopped, the lease was lost")
            elif self.report(task, "task/release", {}):
                self.say(f"task {task_id}: given back to the queue")
            return
        except OllamaError as exc:
            if exc.status is None and "could not connect" in exc.message:
                # Our Ollama is down: not the task's fault. Give it back unspent and wait, longer each time,
                # rather than burn its attempts (and every other task's) in a fraction of a second.
                self.report(task, "task/release", {})
                self.say(f"the Ollama server at {self.ollama} does not answer: task {task_id} given back; "
                         f"trying again in {self._ollama_wait:.0f} s")
                self.stopping.wait(self._ollama_wait)
                self._ollama_wait = min(self._ollama_wait * 2, 60.0)
                return
            # A server that is busy or failing may do better on the next attempt; a refused request will not.
            retry = exc.status is None or exc.status >= 500 or exc.status == -1
            self.report(task, "task", {"error": str(exc), "retry": retry})
            self.say(f"task {task_id}: failed: {exc.message}")
            return
        finally:
            lost.set()  # ends the heartbeat
            beating.join()
        self._ollama_wait = 2.0  # Ollama answered: the next time it does not, start waiting short again
        if self.report(task, "task", {"result": text, "stats": stats}):
            with self._count:
                self.done += 1
            self.say(f"task {task_id}: done, {stats.get('eval_count', '?')} tokens")

    def answer(self, task: dict[str, Any], cancelled: Callable[[], bool]) -> tuple[str, dict[str, Any]]:
        """Stream the task's answer from Ollama; raises :class:`InterruptedError` when ``cancelled()``."""
        options = task.get("options")
        if task.get("messages") is not None:
            messages = task["messages"]
            if task.get("system") and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": task["system"]}, *messages]
            stream: Stream = chat(messages, model=task["model"], options=options, stream=True, server=self.ollama)
        else:
            stream = generate(task["prompt"], model=task["model"], system=task.get("system"), options=options,
                              stream=True, server=self.ollama)
        with stream:
            for _ in stream:
                if cancelled():
                    raise InterruptedError
        if cancelled():
            raise InterruptedError
        reply = stream.reply
        if reply is None:
            raise OllamaError("the answer ended without its final object", status=-1, url=self.ollama)
        stats = {name: reply.stats[name] for name in STATS if name in reply.stats}
        return reply.text, stats

    def _heartbeat(self, task: dict[str, Any], stop: threading.Event) -> None:
        """Extend the lease every third of its length until ``stop``; set ``stop`` if the lease is lost."""
        every = max(float(task.get("lease_seconds", 60)) / 3, 0.2)
        while not stop.wait(every):
            try:
                response = self.session.post(f"{self.queue}/task/heartbeat", json=_lease(task), timeout=(5, 10))
            except requests.RequestException:
                continue  # the manager may be restarting: try again at the next beat
            if response.status_code in (404, 409):
                stop.set()

    def report(self, task: dict[str, Any], route: str, fields: dict[str, Any]) -> bool:
        """POST to ``/task`` or ``/task/release`` until the manager answers; ``True`` if it accepted."""
        wait = 0.5
        deadline = time.monotonic() + 3600  # a manager down for an hour: give up, the lease is long gone
        while time.monotonic() < deadline:
            try:
                response = self.session.post(f"{self.queue}/{route}", json={**_lease(task), **fields},
                                             timeout=(5, 30))
            except requests.RequestException:
                if self.cancelling.is_set():
                    return False  # stopping now: the lease will expire and the task go back by itself
                self.say(f"task {task['task_id']}: the queue does not answer; trying again in {wait:.0f} s")
                time.sleep(wait)
                wait = min(wait * 2, 30)
                continue
            if response.ok:
                return True
            self.say(f"task {task['task_id']}: the queue refused it: {_error(response)}")
            return False
        return False


def _lease(task: dict[str, Any]) -> dict[str, str]:
    return {"task_id": task["task_id"], "lease_token": task["lease_token"]}


def _error(response: requests.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.reason}"
