"""The classroom gateway: one address for a whole class, in front of one or more Ollama servers.

Students use it as they would use Ollama, with their key set (``OLLAMA_HOST=http://gateway:11435`` and
``OLLAMA_API_KEY=<key>`` for the ``ollama`` client; ``base_url="http://gateway:11435/v1"`` and
``api_key=<key>`` for the ``openai`` client). Each request goes through these steps:

1. who: the key in ``Authorization: Bearer <key>`` names a member of the roster (:mod:`.roster`); else 401;
2. what: the policy refuses the request (403, 400, ...) or gives the body to forward, with the class's
   settings in place of the student's where theirs would hurt everybody (:mod:`.policy`);
3. how often: requests per minute and tokens per hour per student (:mod:`.fairqueue`); else 429 with
   ``Retry-After``;
4. when: a request that runs a model waits for its turn in the fair queue (:mod:`.fairqueue`); 503 when
   too many wait, as Ollama answers when its own queue is full;
5. where: the least busy healthy upstream that has the model (:mod:`.upstreams`); the answer comes back
   unchanged, byte for byte as it arrives (:mod:`.relay`);
6. what it cost: one row in the usage log, with Ollama's token counts (:mod:`.usage`).

With several upstreams, the model lists (``/api/tags``, ``/api/ps``, ``/v1/models``) are every healthy
upstream's, merged (:mod:`.listing`), an instructor's pull, create, copy and delete run on every healthy
upstream (:mod:`.everywhere`), and the fair queue shrinks to what the healthy upstreams take.

Without a key: ``GET /`` and ``GET /api/version`` (and HEAD), so clients and health checks can find out that
a server is there before a key is set; they say nothing about the class. Everything else needs a key.

For instructors: ``GET /classroom/status`` (JSON: the queue and the upstreams) and ``GET /classroom`` (a page
for the projector that shows the same every 2 s); the key goes in ``Authorization: Bearer <key>``, or, in a
browser, as the password it asks for.

Run it with ``llm-experiment classroom serve`` or serve :func:`create_app` with any ASGI server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .everywhere import EVERYWHERE, one_answer_for_all, streamed, streamed_one_by_one
from .fairqueue import FairQueue, QueueFull, RateLimits
from .listing import LISTS, NoListing, merged_listing
from .policy import Decision, Policy
from .relay import ClientWatch, Head, Outbound, Outcome, Relay, UpstreamFailed, exchange
from .roster import Member, Roster, bearer_key
from .status_page import PAGE
from .upstream_http import UpstreamClient
from .upstreams import Upstream, Upstreams
from .usage import UsageLog

log = logging.getLogger("llm_experiment.classroom")

#: Answered without a key.
PUBLIC = frozenset({"/", "/api/version"})
#: Routes that run a model: they take a turn in the fair queue and count against the rate limits.
QUEUED = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
                    "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})
#: Routes that change which models an upstream has: the upstreams are checked again after one succeeds.
CHANGES_MODELS = frozenset({"/api/create", "/api/copy", "/api/delete", "/api/pull"})
#: ``read``: the longest pause between two pieces of an answer; long enough for a big model's cold load.
UPSTREAM_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
#: No cap on connections (the fair queue caps the work); idle ones are dropped before an upstream would drop them.
UPSTREAM_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0)
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class Gateway:
    """The gateway's parts and the way of one request through them; :func:`create_app` serves it."""

    def __init__(self, upstreams: Sequence[Upstream], roster: Roster, policy: Policy, usage: UsageLog,
                 queue: FairQueue, limits: RateLimits, check_every: float = 5.0):
        self.roster, self.policy, self.usage, self.queue, self.limits = roster, policy, usage, queue, limits
        self.client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, limits=UPSTREAM_LIMITS)  # checks, lists, everywhere
        self.relay_client = UpstreamClient(connect_timeout=UPSTREAM_TIMEOUT.connect or 5.0,
                                           read_timeout=UPSTREAM_TIMEOUT.read or 300.0,
                                           write_timeout=UPSTREAM_TIMEOUT.write or 300.0,
                                           keepalive_expiry=UPSTREAM_LIMITS.keepalive_expiry or 2.0)
        self.upstreams = Upstreams(upstreams, self.client, check_every, on_change=self._resize_queue)
        self._background: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """While the app runs: the upstreams are checked every few seconds. At the end the connections close."""
        checker = asyncio.create_task(self.upstreams.run())
        try:
            yield
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
            await self.client.aclose()
            await self.relay_client.aclose()

    # the students' routes ----------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Every route but the instructor's two: the steps in the module's docstring."""
        method, path, started_at = request.method, request.url.path, time.time()
        if path in PUBLIC and method in ("GET", "HEAD"):
            return await self._forward(request, None, Outbound(method, path), started_at)
        member = await self._member(bearer_key(request.headers.get("authorization")))
        if member is None:
            return refusal(self.policy.check(None, method, path), {"www-authenticate": "Bearer"})
        try:
            body, rest = await read_body(request, self.policy.settings.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=499)  # gone before sending its whole body: nobody reads this
        decision = self.policy.check(member, method, path, body)
        if not decision.allowed:
            named = logged_model(_json_object(body)) if rest is None else None
            self._record(member, path, named, decision.status, started_at)
            return refusal(decision)
        if decision.changes:
            log.info("%s %s: %s", member.name, path, "; ".join(decision.changes))
        if method == "GET" and path in LISTS and len(self.upstreams.upstreams) > 1:
            return await self._listing(member, path, started_at, decision.openai)
        outbound, model = outbound_request(method, path, decision, body, rest, request.headers)
        if (member.is_instructor and path in EVERYWHERE and outbound.replayable
                and len(self.upstreams.healthy()) > 1):
            return await self._everywhere(member, outbound, streamed(path, _json_object(body)), started_at, model)
        if path in QUEUED and not member.is_instructor:
            wait = self.limits.check(member.name)
            if wait is not None:
                self._record(member, path, model, 429, started_at)
                return error(429, self._rate_message(math.ceil(wait)), decision.openai,
                             {"retry-after": str(max(1, math.ceil(wait)))})
        return await self._forward(request, member, outbound, started_at, openai=decision.openai, model=model)

    async def _forward(self, request: Request, member: Member | None, outbound: Outbound, started_at: float, *,
                       openai: bool = False, model: str | None = None) -> Response:
        """Wait for a turn and an upstream's answer, then relay it; the client leaving cancels both."""
        outcome = Outcome()
        pieces = self._exchange(member, outbound, outcome, started_at, model)
        head = None
        if not outbound.replayable:  # still reading the body as we send it: the upstream notices if the client leaves
            watch = None
        else:  # the body was read: a disconnect can be noticed while we wait (and then cancels the wait)
            watch = ClientWatch(request.receive)
        try:
            if watch is None:
                head = await anext(pieces)
            else:
                with watch:
                    head = await anext(pieces)
        except QueueFull as exc:
            return error(503, str(exc), openai)
        except UpstreamFailed as exc:
            return error(exc.status, exc.message, openai)
        finally:
            if head is None and watch is not None:
                watch.stop()
        if head is None:
            return Response(status_code=499)  # the client left while waiting; nobody reads this
        assert isinstance(head, Head)
        return Relay(pieces, head, watch)  # type: ignore[arg-type]

    async def _exchange(self, member: Member | None, outbound: Outbound, outcome: Outcome, started_at: float,
                        model: str | None) -> AsyncIterator[Head | bytes]:
        """One request upstream: a turn in the fair queue if it runs a model, the answer, then the usage row."""
        turn: Any = contextlib.nullcontext(None)
        if member is not None and outbound.path in QUEUED:
            turn = self.queue.slot(member.name)
        try:
            async with turn as waited_ns:
                outcome.wait_ns = waited_ns
                async with contextlib.aclosing(exchange(self.relay_client, self.upstreams, outbound,
                                                        outcome)) as pieces:
                    async for piece in pieces:
                        yield piece
        except (QueueFull, UpstreamFailed) as exc:
            outcome.status, outcome.complete = (503 if isinstance(exc, QueueFull) else exc.status), True
            raise
        finally:
            if member is not None:
                self._finish(member, outbound.path, model, outcome, started_at)

    async def _listing(self, member: Member, path: str, started_at: float, openai: bool) -> Response:
        """``/api/tags``, ``/api/ps`` or ``/v1/models`` of every healthy upstream, merged (:mod:`.listing`)."""
        try:
            merged = await merged_listing(self.client, self.upstreams, path)
        except NoListing as exc:
            self._record(member, path, None, 503, started_at)
            return error(503, str(exc), openai)
        self._record(member, path, None, 200, started_at)
        return JSONResponse(merged)

    async def _everywhere(self, member: Member, outbound: Outbound, stream: bool, started_at: float,
                          model: str | None) -> Response:
        """An instructor's pull, create, copy or delete on every healthy upstream (:mod:`.everywhere`)."""
        ups = self.upstreams.healthy()
        if not stream:
            status, content = await one_answer_for_all(self.client, ups, outbound)
            self._record(member, outbound.path, model, status, started_at)
            if status == 200:
                self._check_upstreams_soon()
            return Response(content, status_code=status, media_type="application/json")
        pieces = streamed_one_by_one(self.client, ups, outbound)
        head = await anext(pieces)
        assert isinstance(head, Head)

        async def rest() -> AsyncIterator[bytes]:
            try:
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        assert isinstance(piece, bytes)
                        yield piece
            finally:
                self._record(member, outbound.path, model, head.status, started_at)
                self._check_upstreams_soon()  # so requests for the new model find every upstream that has it

        return StreamingResponse(rest(), status_code=head.status, media_type=head.content_type)

    # bookkeeping -----------------------------------------------------------------------------------------

    def _resize_queue(self) -> None:
        """An upstream went down or came back: the fair queue lets as many run as the healthy ones take."""
        capacity = self.upstreams.healthy_capacity
        log.info("the fair queue now runs %d request(s) at once (%d of %d upstreams healthy)", max(1, capacity),
                 len(self.upstreams.healthy()), len(self.upstreams.upstreams))
        self.queue.resize(capacity)

    async def _member(self, key: str | None) -> Member | None:
        """The member whose key this is, looked up on the event loop.

        The roster remembers the keys it has seen until its file changes, and finds out whether it did with
        one ``PRAGMA data_version`` (in WAL mode a reader never waits for a writer): microseconds, where
        handing the lookup to a worker thread cost about 0.5 ms per request (bench/README.md).
        """
        if key is None:
            return None
        return self.roster.authenticate(key)

    def _finish(self, member: Member, path: str, model: str | None, outcome: Outcome, started_at: float) -> None:
        """Log a forwarded request with Ollama's counts, and count its tokens against the student's hour."""
        counts = outcome.tail.counts()
        duration = counts.get("total_duration")  # Ollama's own; /v1 answers have none: then the time upstream
        if duration is None and outcome.sent_ns is not None:
            duration = (outcome.finished_ns or time.monotonic_ns()) - outcome.sent_ns
        status = outcome.status if outcome.complete else 499
        self._record(member, path, model, status, started_at, counts.get("prompt_eval_count"),
                     counts.get("eval_count"), duration, outcome.wait_ns)
        self.limits.add_tokens(member.name, counts.get("prompt_eval_count", 0) + counts.get("eval_count", 0))
        if path in CHANGES_MODELS and status == 200:
            self._check_upstreams_soon()  # so requests for a new model find the upstream that has it

    def _record(self, member: Member, path: str, model: str | None, status: int, started_at: float,
                prompt_eval_count: int | None = None, eval_count: int | None = None,
                total_duration_ns: int | None = None, wait_ns: int | None = None) -> None:
        try:
            self.usage.record(member.name, path, model, status, prompt_eval_count, eval_count, total_duration_ns,
                              wait_ns, started_at=started_at)
        except RuntimeError:  # the log was closed: the gateway is shutting down
            log.warning("usage log closed: %s %s %s not logged", member.name, path, status)

    def _check_upstreams_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.upstreams.refresh())
        self._background.add(task)  # a reference, so the task is not garbage-collected while it runs
        task.add_done_callback(self._background.discard)

    def _rate_message(self, seconds: int) -> str:
        limits = []
        if self.limits.requests_per_minute is not None:
            limits.append(f"{self.limits.requests_per_minute} requests per minute")
        if self.limits.tokens_per_hour is not None:
            limits.append(f"{self.limits.tokens_per_hour} tokens per hour")
        return f"too many requests: the class allows each student {' and '.join(limits)}; try again in {seconds} s"

    # the instructor's routes ---------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        """``GET /classroom/status``: the fair queue, the upstreams and the limits, as JSON."""
        refused = await self._instructor_only(request)
        if refused is not None:
            return refused
        return JSONResponse(self.status_report(), headers={"cache-control": "no-store"})

    async def page(self, request: Request) -> Response:
        """``GET /classroom``: the status page for the projector."""
        refused = await self._instructor_only(request)
        return refused or HTMLResponse(PAGE, headers={"cache-control": "no-store"})

    def status_report(self) -> dict[str, Any]:
        """What ``/classroom/status`` answers."""
        settings = self.policy.settings
        return {"queue": self.queue.status(), "upstreams": self.upstreams.status(),
                "limits": {"requests_per_minute": self.limits.requests_per_minute,
                           "tokens_per_hour": self.limits.tokens_per_hour, "num_predict": settings.num_predict,
                           "keep_alive": settings.keep_alive, "num_ctx": settings.num_ctx,
                           "allowed_models": settings.allowed_models}}

    async def _instructor_only(self, request: Request) -> Response | None:
        """``None`` for an instructor's key (Bearer, or a browser's Basic password); else the 401 or 403."""
        header = request.headers.get("authorization")
        member = await self._member(bearer_key(header) or basic_password(header))
        if member is None:
            response = error(401, "the classroom status needs an instructor's key: send it as "
                                  "'Authorization: Bearer <key>', or as the password your browser asks for", False)
            response.headers["www-authenticate"] = "Bearer"
            response.headers.append("www-authenticate", 'Basic realm="classroom", charset="UTF-8"')
            return response
        if not member.is_instructor:
            return error(403, "the classroom status is for instructors", False)
        return None


# helpers ---------------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The body, read up to just past ``limit`` bytes; and the rest, still unread, if there is more."""
    stream = request.stream()
    body = bytearray()
    async for piece in stream:
        body += piece
        if len(body) > limit:
            return bytes(body), stream
    return bytes(body), None


def outbound_request(method: str, path: str, decision: Decision, body: bytes, rest: AsyncIterator[bytes] | None,
                     headers: Any) -> tuple[Outbound, str | None]:
    """What to send upstream, and the model to log. Never the student's key: upstreams need none."""
    forward = {"accept-encoding": "identity"}  # the bytes are passed on as they come: nothing to decompress
    if decision.passthrough:  # an instructor's request, as received (an upload may be streamed through)
        content: bytes | AsyncIterator[bytes] | None = (body or None) if rest is None else _chain(body, rest)
        fields = _json_object(body) if rest is None else {}
        for name in ("content-type",) if rest is None else ("content-type", "content-length"):
            if name in headers:
                forward[name] = headers[name]
    else:
        fields = decision.body or {}
        content = None if decision.body is None else json.dumps(decision.body).encode()
        if content is not None:
            forward["content-type"] = "application/json"
    # An upstream is picked by the model the request reads (a create's "from", a copy's "source").
    pick = next((v for k in ("from", "source", "model", "name") if isinstance(v := fields.get(k), str) and v), "")
    idempotent = method in ("GET", "HEAD") or path in QUEUED or path == "/api/show"
    return Outbound(method, path, content, forward, model=pick, idempotent=idempotent), logged_model(fields)


def logged_model(fields: dict[str, Any]) -> str | None:
    """The model a request names, for the usage log: its ``model`` (or older ``name``), a copy's ``destination``."""
    return next((v for k in ("model", "name", "destination") if isinstance(v := fields.get(k), str) and v), None)


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def basic_password(authorization: str | None) -> str | None:
    """The password in an ``Authorization: Basic ...`` header (a browser's login box), or ``None``."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    return decoded.partition(":")[2] or None


def refusal(decision: Decision, headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusing decision as a response, in Ollama's error shape (OpenAI's on ``/v1``)."""
    return JSONResponse(decision.payload(), status_code=decision.status, headers=headers)


def error(status: int, message: str, openai: bool, headers: dict[str, str] | None = None) -> JSONResponse:
    """The gateway's own error, in the same shapes as the policy's."""
    return refusal(Decision(status=status, error=message, openai=openai), headers)


async def _on_bug(request: Request, exc: Exception) -> Response:
    """A bug: a clean 500 in Ollama's shape; the traceback goes to the log (Starlette re-raises)."""
    log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
    return error(500, "internal error in the classroom gateway (logged)", request.url.path.startswith("/v1/"))


def create_app(upstreams: Sequence[str | Upstream], roster: Roster, policy: Policy, usage: UsageLog, *,
               per_student: int = 1, requests_per_minute: int | None = None, tokens_per_hour: int | None = None,
               max_waiting: int = 512, check_every: float = 5.0, origins: Sequence[str] = ()) -> Starlette:
    """The gateway as an ASGI app, in front of the Ollama servers ``upstreams`` (``OLLAMA_HOST`` form, or
    :class:`Upstream` objects to say how many requests each runs at once).

    As many requests run at once as the upstreams can take together (each one's ``parallel``, default 1),
    at most ``per_student`` of them for one student; up to ``max_waiting`` more wait in the fair queue.
    ``requests_per_minute`` and ``tokens_per_hour`` limit each student (``None``: no limit); instructors
    have no limits. The upstreams are checked every ``check_every`` seconds. ``usage`` stays open: its
    owner closes it after the app has stopped.

    ``origins``: web pages (``https://app.example.org``) whose JavaScript may call the gateway from a
    browser, key in hand (CORS). None by default: students' notebooks and programs need no CORS at all.
    """
    servers = [up if isinstance(up, Upstream) else Upstream(up) for up in upstreams]
    if not servers:
        raise ValueError("the gateway needs at least one upstream Ollama server URL")
    queue = FairQueue(capacity=sum(up.parallel for up in servers), per_student=per_student, max_waiting=max_waiting)
    gateway = Gateway(servers, roster, policy, usage, queue, RateLimits(requests_per_minute, tokens_per_hour),
                      check_every)
    app = Starlette(routes=[Route("/classroom/status", gateway.status, methods=["GET"]),
                            Route("/classroom", gateway.page, methods=["GET"]),
                            Route("/{path:path}", gateway.handle, methods=_METHODS)],
                    exception_handlers={Exception: _on_bug}, lifespan=gateway.lifespan)
    if origins:  # answers the browser's preflight (which carries no key) and marks the answers as readable
        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=_METHODS,
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"],
                           max_age=600)
    app.state.gateway = gateway
    return app


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 11435, *, log_level: str = "info") -> int:
    """Run the gateway ``app`` until Ctrl-C or SIGTERM, as the engine and the chatbot run; return an exit code."""
    from ..engine.connections import listen, serve_until_stopped

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if log_level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # its line per upstream call repeats uvicorn's
    sock = listen(host, port, "the gateway")
    if sock is None:
        return 1
    gateway: Gateway = app.state.gateway
    shown = f"[{host}]" if ":" in host else host
    upstreams = ", ".join(up.url for up in gateway.upstreams.upstreams)
    print(f"llm-experiment classroom: http://{shown}:{sock.getsockname()[1]} -> {upstreams}; status page at "
          "/classroom. Ctrl-C to stop.", file=sys.stderr, flush=True)
    serve_until_stopped(app, sock, log_level=log_level, access_log=True)
    print("llm-experiment classroom: stopped", file=sys.stderr)
    return 0
