"""The task queue's manager: an HTTP server where submitters leave prompts and workers pull them.

The naive version of this server (an in-memory Flask app) has four routes, kept here with their shapes so
its clients keep working::

    POST /submit        {"prompt": "...", "model": "..."}   -> {"task_id": "...", "status": "Task submitted."}
    GET  /task                                               -> {"task_id", "prompt", "model", ...} or 204
    POST /task          {"task_id", "result", ...}           -> {"message": "Result received."}
    GET  /result/<id>                                        -> {"task_id", "result"} once done

and what reliability needs on top: every task handed out comes with a ``lease_token`` that its result must
carry (``POST /task`` without it is refused), ``POST /task/heartbeat`` to extend a lease, ``POST /task/release``
to give a task back, ``POST /task`` with ``"error"`` instead of ``"result"`` to report a failure, batch submit
(``{"tasks": [...]}``), ``GET /tasks`` for a submitter's own tasks, and ``GET /health``.

Keys come from the classroom roster (``llm-experiment classroom add-student|add-worker``), sent as
``Authorization: Bearer KEY``: students and instructors submit and read their results (an instructor reads
everyone's), workers lease tasks and post results. ``open_access=True`` lets anyone do both, for a demo on
one's own computer. Errors are ``{"error": "..."}``, as Ollama's.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..bodies import TooLarge, read_bounded
from ..classroom.roster import INSTRUCTOR, STUDENT, WORKER, Roster, bearer_key
from ..hosts import default_model
from ..protocol import normalize_name
from .store import DONE, FAILED, QUEUED, RUNNING, NewTask, Task, TaskStore

log = logging.getLogger(__name__)

ANYONE = "anyone"  # the caller's role when the manager runs with open access
ROLES = (STUDENT, INSTRUCTOR, WORKER)


@dataclass(frozen=True)
class Limits:
    """What one request may ask (sizes in characters, or bytes for the body)."""

    max_body: int = 8 * 1024 * 1024
    max_prompt: int = 200_000
    max_batch: int = 1000
    max_pending: int = 2000  # queued or running tasks per submitter
    max_result: int = 2_000_000


class Refused(Exception):
    """A request the manager turns down: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Caller:
    name: str
    role: str

    @property
    def submits(self) -> bool:
        return self.role in (STUDENT, INSTRUCTOR, ANYONE)

    @property
    def works(self) -> bool:
        return self.role in (WORKER, ANYONE)


class Manager:
    """The routes, over a :class:`TaskStore` and a :class:`Roster` (``None`` with open access)."""

    def __init__(self, store: TaskStore, roster: Roster | None, *, lease: float = 60.0, model: str | None = None,
                 limits: Limits = Limits()):
        self.store, self.roster, self.lease, self.limits = store, roster, lease, limits
        self.model = model or default_model()

    # submitters --------------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        caller = await self.caller(request, "submit tasks", worker=False)
        body = await self.body(request)
        batch = "tasks" in body
        items = body["tasks"] if batch else [body]
        if batch and (not isinstance(items, list) or not items):
            raise Refused(400, '"tasks" must be a non-empty list of tasks, each like {"prompt": "..."}')
        if len(items) > self.limits.max_batch:
            raise Refused(400, f"{len(items)} tasks in one batch; at most {self.limits.max_batch}: "
                               "send several batches")
        tasks = [self.new_task(item, f"task {n}: " if batch else "") for n, item in enumerate(items)]
        pending = await anyio.to_thread.run_sync(self.store.pending, caller.name)
        if pending + len(tasks) > self.limits.max_pending:
            raise Refused(429, f"you have {pending} tasks waiting or running; at most {self.limits.max_pending} "
                               "at once: collect some results first")
        ids = await anyio.to_thread.run_sync(self.store.submit, caller.name, tasks)
        log.info("%s submitted %d task(s)", caller.name, len(ids))
        if batch:
            return JSONResponse({"task_ids": ids, "status": f"{len(ids)} tasks submitted."})
        return JSONResponse({"task_id": ids[0], "status": "Task submitted."})

    async def result(self, request: Request) -> Response:
        caller = await self.caller(request, "read results", worker=False)
        task = await self.own_task(caller, request.path_params["task_id"])
        return JSONResponse(describe(task))

    async def tasks(self, request: Request) -> Response:
        caller = await self.caller(request, "list tasks", worker=False)
        status = request.query_params.get("status")
        if status is not None and status not in (QUEUED, RUNNING, DONE, FAILED):
            raise Refused(400, f"unknown status {status!r}: use queued, running, done or failed")
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise Refused(400, "limit must be a whole number from 1 to 1000")
        owner = None if caller.role == INSTRUCTOR else caller.name
        found = await anyio.to_thread.run_sync(lambda: self.store.list(owner, status, limit))
        return JSONResponse({"tasks": [describe(task) for task in found]})

    # workers -----------------------------------------------------------------------------------

    async def lease_task(self, request: Request) -> Response:
        caller = await self.caller(request, "take tasks", worker=True)
        task = await anyio.to_thread.run_sync(self.store.claim, caller.name, self.lease)
        if task is None:
            return Response(status_code=204)
        log.info("task %s leased to %s (attempt %d of %d)", task.id, caller.name, task.attempts, task.max_attempts)
        handed = {"task_id": task.id, "prompt": task.prompt, "model": task.model, "lease_token": task.lease_token,
                  "lease_seconds": self.lease, "attempt": task.attempts, "max_attempts": task.max_attempts}
        for field in ("messages", "system", "options"):
            if getattr(task, field) is not None:
                handed[field] = getattr(task, field)
        return JSONResponse(handed)

    async def post_result(self, request: Request) -> Response:
        await self.caller(request, "post results", worker=True)
        body = await self.body(request)
        task_id, token = self.lease_of(body, "a result")
        if "error" in body and "result" not in body:
            error = _text(body, "error", self.limits.max_result)
            retry = body.get("retry", True)
            if not isinstance(retry, bool):
                raise Refused(400, '"retry" must be true or false')
            status = await anyio.to_thread.run_sync(lambda: self.store.fail(task_id, token, error, retry=retry))
            if status is None:
                raise await self.lease_ended(task_id)
            log.info("task %s: the worker reported %r; now %s", task_id, error[:200], status)
            return JSONResponse({"message": "Failure received.", "status": status})
        result = _text(body, "result", self.limits.max_result)
        stats = body.get("stats")
        if stats is not None and not (isinstance(stats, dict) and len(stats) <= 50):
            raise Refused(400, '"stats" must be an object of at most 50 fields (the timing figures)')
        outcome = await anyio.to_thread.run_sync(self.store.complete, task_id, token, result, stats)
        if outcome == "refused":
            raise await self.lease_ended(task_id)
        log.info("task %s: result %s", task_id, outcome)
        return JSONResponse({"message": "Result received." if outcome == "stored" else "Result already received."})

    async def heartbeat(self, request: Request) -> Response:
        await self.caller(request, "extend leases", worker=True)
        task_id, token = self.lease_of(await self.body(request), "a heartbeat")
        if await anyio.to_thread.run_sync(self.store.heartbeat, task_id, token, self.lease) is None:
            raise await self.lease_ended(task_id)
        return JSONResponse({"message": "Lease extended.", "lease_seconds": self.lease})

    async def release(self, request: Request) -> Response:
        await self.caller(request, "release tasks", worker=True)
        task_id, token = self.lease_of(await self.body(request), "a release")
        if not await anyio.to_thread.run_sync(self.store.release, task_id, token):
            raise await self.lease_ended(task_id)
        return JSONResponse({"message": "Task released: it is queued again."})

    # anyone ------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        counts = await anyio.to_thread.run_sync(self.store.counts)
        return JSONResponse({"status": "ok", "tasks": counts, "lease_seconds": self.lease})

    # helpers -----------------------------------------------------------------------------------

    async def caller(self, request: Request, action: str, *, worker: bool) -> Caller:
        """Who sent ``request`` (by its key); 401 without a valid key, 403 unless a worker's key when
        ``worker`` (taking tasks, posting results), else a student's or instructor's (submitting, reading)."""
        if self.roster is None:
            return Caller("anyone", ANYONE)
        key = bearer_key(request.headers.get("authorization"))
        if key is None:
            raise Refused(401, "this task queue needs a key: send the header Authorization: Bearer <key> "
                               "(ask your instructor for one)")
        member = await anyio.to_thread.run_sync(self.roster.authenticate, key)
        if member is None:
            raise Refused(401, "unknown or revoked key: check it, or ask your instructor for a new one")
        caller = Caller(member.name, member.role)
        if not (caller.works if worker else caller.submits):
            who = "workers" if caller.role == WORKER else f"{caller.role}s"
            allowed = ("only worker keys (llm-experiment classroom add-worker NAME) may" if worker
                       else "only student and instructor keys may")
            raise Refused(403, f"{who} may not {action} here: {allowed} {action}")
        return caller

    async def body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object, at most ``max_body`` bytes."""
        limit = self.limits.max_body
        try:
            raw = await read_bounded(request, limit)
        except TooLarge:
            raise Refused(413, f"the body is larger than {limit} bytes: send fewer or shorter tasks per "
                               "request") from None
        except ClientDisconnect:
            raise Refused(400, "the client left before sending the whole body") from None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise Refused(400, "the body is not valid JSON: send a JSON object such as "
                               '{"prompt": "Why is the sky blue?"}') from None
        if not isinstance(body, dict):
            raise Refused(400, f"the body must be a JSON object, not {type(body).__name__}")
        return body

    def new_task(self, item: Any, where: str) -> NewTask:
        """A submitted task, checked: a prompt or messages, a valid model name, a few optional fields."""
        if not isinstance(item, dict):
            raise Refused(400, f'{where}a task must be an object like {{"prompt": "..."}}')
        model = item.get("model") or self.model
        if not isinstance(model, str) or normalize_name(model) is None:
            raise Refused(400, f"{where}invalid model name {str(model)[:100]!r}: use a name like smollm2:135m")
        prompt, messages = item.get("prompt"), item.get("messages")
        if (prompt is None) == (messages is None):
            raise Refused(400, f'{where}give either "prompt" (a string) or "messages" (a chat), not '
                               + ("both" if prompt is not None else "neither"))
        if prompt is not None:
            prompt = _text(item, "prompt", self.limits.max_prompt, where)
            if not prompt.strip():
                raise Refused(400, f'{where}"prompt" is empty: write something for the model to answer')
        else:
            messages = _messages(messages, self.limits.max_prompt, where)
        system = None if item.get("system") is None else _text(item, "system", self.limits.max_prompt, where)
        options = item.get("options")
        if options is not None and not (isinstance(options, dict) and len(options) <= 50):
            raise Refused(400, f'{where}"options" must be an object such as {{"temperature": 0}}')
        return NewTask(model=model, prompt=prompt, messages=messages, system=system, options=options)

    def lease_of(self, body: dict[str, Any], what: str) -> tuple[str, str]:
        task_id = body.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise Refused(400, f'"task_id" is missing from {what}: send the task_id that came with the task')
        token = body.get("lease_token")
        if not isinstance(token, str) or not token:
            raise Refused(400, f'"lease_token" is missing from {what}: send back the lease_token that came with '
                               "the task (GET /task); it proves your lease has not ended")
        return task_id, token

    async def lease_ended(self, task_id: str) -> Refused:
        """Why a lease token was not accepted: 404 for an unknown task, 409 for a lease that ended."""
        task = await anyio.to_thread.run_sync(self.store.get, task_id)
        if task is None:
            return Refused(404, f"no task {task_id!r}")
        return Refused(409, f"your lease on task {task_id} has ended (it expired, or the task went back to the "
                            f"queue or to another worker; it is {task.status} now): your result was not stored")

    async def own_task(self, caller: Caller, task_id: str) -> Task:
        task = await anyio.to_thread.run_sync(self.store.get, task_id)
        if task is None or not (caller.role in (INSTRUCTOR, ANYONE) or task.owner == caller.name):
            raise Refused(404, f"no task {task_id[:100]!r} of yours: check the task_id that /submit gave you")
        return task


def describe(task: Task) -> dict[str, Any]:
    """What a submitter sees of a task: ``result`` only once it is done, ``error`` once it failed."""
    shown: dict[str, Any] = {"task_id": task.id, "status": task.status, "model": task.model,
                             "attempts": task.attempts, "submitted": task.submitted}
    if task.started is not None:  # when a worker first took it (Unix seconds, as submitted and finished)
        shown["started"] = task.started
    if task.status == DONE:
        shown.update(result=task.result, stats=task.stats or {}, finished=task.finished)
    elif task.error:  # failed, or queued again after a failed attempt
        shown["error"] = task.error
    if task.status == FAILED:
        shown["finished"] = task.finished
    return shown


def _text(body: dict[str, Any], field: str, limit: int, where: str = "") -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise Refused(400, f'{where}"{field}" must be a string' + ("" if field in body else ", and it is missing"))
    if len(value) > limit:
        raise Refused(413, f'{where}"{field}" has {len(value)} characters; at most {limit}')
    return value


def _messages(messages: Any, limit: int, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise Refused(400, f'{where}"messages" must be a non-empty list like [{{"role": "user", "content": "Hi"}}]')
    checked, size = [], 0
    for n, message in enumerate(messages):
        if not (isinstance(message, dict) and message.get("role") in ("system", "user", "assistant")
                and isinstance(message.get("content"), str)):
            raise Refused(400, f'{where}message {n} must be {{"role": "system"|"user"|"assistant", "content": "..."}}')
        size += len(message["content"])
        checked.append({"role": message["role"], "content": message["content"]})
    if size > limit:
        raise Refused(413, f"{where}the messages have {size} characters; at most {limit}")
    return checked


async def _on_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _on_bug(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse({"error": "internal error in the task queue (logged)"}, status_code=500)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    message = ("no such route: the task queue has POST /submit, GET /task, POST /task, GET /result/<task_id>, "
               "GET /tasks, POST /task/heartbeat, POST /task/release and GET /health")
    if status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": message}, status_code=status)


def create_app(store: TaskStore, roster: Roster | None, *, lease: float = 60.0, model: str | None = None,
               limits: Limits = Limits()) -> Starlette:
    """The manager as an ASGI app. ``roster=None`` means open access: no keys, anyone submits and works."""
    manager = Manager(store, roster, lease=lease, model=model, limits=limits)
    app = Starlette(routes=[Route("/submit", manager.submit, methods=["POST"]),
                            Route("/task", manager.lease_task, methods=["GET"]),
                            Route("/task", manager.post_result, methods=["POST"]),
                            Route("/task/heartbeat", manager.heartbeat, methods=["POST"]),
                            Route("/task/release", manager.release, methods=["POST"]),
                            Route("/result/{task_id}", manager.result, methods=["GET"]),
                            Route("/tasks", manager.tasks, methods=["GET"]),
                            Route("/health", manager.health, methods=["GET"])],
                    exception_handlers={Refused: _on_refused, 404: _not_found, 405: _not_found, Exception: _on_bug})
    app.state.manager = manager
    return app


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 5000, *, log_level: str = "info") -> int:
    """Run the manager ``app`` until Ctrl-C or SIGTERM, as the engine and the gateway run; return an exit code."""
    from ..engine.connections import listen, serve_until_stopped

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    sock = listen(host, port, "the task queue")
    if sock is None:
        return 1
    manager: Manager = app.state.manager
    shown = f"[{host}]" if ":" in host else host
    access = "open to anyone (no keys)" if manager.roster is None else f"keys from {manager.roster.path}"
    print(f"llm-experiment queue: http://{shown}:{sock.getsockname()[1]}, tasks in {manager.store.path}, {access}, "
          f"leases of {manager.lease:g} s. Ctrl-C to stop.", file=sys.stderr, flush=True)
    serve_until_stopped(app, sock, log_level=log_level, access_log=log_level == "debug")
    print("llm-experiment queue: stopped", file=sys.stderr)
    return 0
