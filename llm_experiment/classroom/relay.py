"""Passing one request on to an upstream Ollama server, and its answer back as it comes.

The gateway changes nothing in an answer: :func:`exchange` yields the upstream's status and content type
(a :class:`Head`), then each piece of the body the moment it arrives, so a streamed answer reaches the
student token by token, exactly as Ollama sent it (NDJSON on the native routes, server-sent events on
``/v1``). Along the way it keeps only the end of the answer (:class:`Tail`), where Ollama puts its token
counts, for the usage log.

When things go wrong:

- the upstream cannot be reached (it is down): it is marked failed and the request goes once more to
  another healthy upstream, since nothing has been sent to the student yet;
- the upstream takes the request and drops the connection before answering: the same, for requests that
  may safely run twice (running a model, looking something up), not for creating or deleting a model;
- the upstream dies in the middle of an answer: the student's stream ends with an error line in the
  answer's own framing (``{"error": "..."}`` for NDJSON, an error event for SSE), never with a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import upstream_http as http
from .upstream_http import UpstreamClient
from .upstreams import NoUpstream, Upstreams

log = logging.getLogger("llm_experiment.classroom")

# Nothing reached the upstream: always safe to send the request elsewhere.
_NOT_SENT = (http.ConnectError,)  # ConnectTimeout is one
# The upstream took (part of) the request and vanished without an answer: safe to resend only what may run twice.
_NO_ANSWER = (http.RemoteProtocolError, http.ReadError, http.WriteError)


class UpstreamFailed(Exception):
    """No upstream could answer: the gateway answers ``status`` (502, 503 or 504) with ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Outbound:
    """A request as the gateway sends it upstream."""

    method: str
    path: str  # the path the policy checked
    content: bytes | AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    model: str = ""  # the model to find an upstream for; "" for any upstream
    idempotent: bool = True  # running it twice does no harm (not so for create, copy, delete, pull...)

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again (a streamed upload cannot)."""
        return self.content is None or isinstance(self.content, bytes)


@dataclass(frozen=True)
class Head:
    """The upstream's status and content type, known before the first byte of its body."""

    status: int
    content_type: str | None


_COUNT = re.compile(rb'"(prompt_eval_count|eval_count|total_duration|prompt_tokens|completion_tokens)"\s*:\s*(\d+)')


class Tail:
    """The end of an answer, fed piece by piece: the last line that carries data, at most ``KEEP`` bytes of it.

    Ollama's counts are in its last NDJSON line (streamed), at the end of its JSON object (not streamed),
    and in the ``usage`` of ``/v1`` answers (in the last event before ``data: [DONE]`` when streamed with
    ``stream_options.include_usage``). Nothing else of the answer is kept.
    """

    KEEP = 16 * 1024  # a done line is a few hundred bytes; a long one is cut from the front, keeping its end

    def __init__(self) -> None:
        self.last = b""  # the last complete line that carries data
        self.partial = b""  # the line still arriving (a non-streamed answer has no newline at all)
        self.size = 0  # bytes seen

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()[-self.KEEP:]
        for line in reversed(lines):
            stripped = line.strip()
            if stripped and stripped != b"data: [DONE]":
                self.last = line[-self.KEEP:]
                break

    @property
    def ends_line(self) -> bool:
        """Whether what was sent so far ends with a newline (an error line may follow directly)."""
        return not self.partial

    def counts(self) -> dict[str, int]:
        """``prompt_eval_count``, ``eval_count`` and ``total_duration`` where the answer gave them.

        Read with a pattern rather than a JSON parser, so a cut line still gives its counts. A key
        inside a string cannot match (its quotes are escaped there); where a key occurs twice (a tool
        call's arguments could hold one), the last occurrence is Ollama's.
        """
        text = self.partial if self.partial.strip() else self.last
        found = {key.decode(): int(value) for key, value in _COUNT.findall(text)}
        out = {"prompt_eval_count": found.get("prompt_eval_count", found.get("prompt_tokens")),
               "eval_count": found.get("eval_count", found.get("completion_tokens")),
               "total_duration": found.get("total_duration")}
        return {key: value for key, value in out.items() if value is not None}


@dataclass
class Outcome:
    """What happened to one request, filled in as it goes, for the usage log."""

    status: int = 499  # until an answer is complete: 499 means the client left first (nginx's code)
    complete: bool = False
    wait_ns: int | None = None  # time in the gateway's fair queue
    sent_ns: int | None = None  # time.monotonic_ns() when the request went upstream
    finished_ns: int | None = None
    upstream: str | None = None
    tail: Tail = field(default_factory=Tail)


async def exchange(client: UpstreamClient, upstreams: Upstreams, request: Outbound,
                   outcome: Outcome) -> AsyncIterator[Head | bytes]:
    """Send ``request`` to an upstream; yield its :class:`Head`, then the body's bytes as they arrive.

    Raises :class:`UpstreamFailed` before the head when no upstream answers (see the module's docstring).
    Close the generator (``aclose``) to stop: that closes the upstream connection, which stops Ollama.
    """
    tried: list[str] = []
    while True:
        try:
            up = upstreams.pick(request.model)
        except NoUpstream as exc:
            raise UpstreamFailed(503, str(exc)) from None
        tried.append(up.url)
        outcome.upstream = up.url
        response: http.Response | None = None
        async with upstreams.use(up):
            try:
                outcome.sent_ns = time.monotonic_ns()
                response = await client.request(request.method, up.url + request.path, request.headers,
                                                request.content)
                outcome.status = response.status
                content_type = response.header("content-type")
                yield Head(response.status, content_type)
                async for chunk in response.aiter_raw():
                    outcome.tail.feed(chunk)
                    yield chunk
                outcome.complete, outcome.finished_ns = True, time.monotonic_ns()
                return
            except http.UpstreamError as exc:
                if response is not None:  # the status line has gone: the error can only travel in the stream
                    outcome.status, outcome.complete, outcome.finished_ns = 502, True, time.monotonic_ns()
                    log.warning("upstream %s failed during an answer to %s: %r", up.url, request.path, exc)
                    yield error_chunk(content_type, outcome.tail,
                                      f"the Ollama server at {up.url} stopped in the middle of the answer "
                                      f"({describe(exc)}): try again")
                    return
                resend = request.replayable and (isinstance(exc, _NOT_SENT)
                                                 or (request.idempotent and isinstance(exc, _NO_ANSWER)))
                if isinstance(exc, _NOT_SENT + _NO_ANSWER):
                    upstreams.mark_failed(up, exc)
                if not resend or len(tried) > 1 or not any(u.healthy for u in upstreams.upstreams):
                    raise _failure(exc, tried) from None
                log.warning("upstream %s failed (%s): sending %s to another one", up.url, describe(exc), request.path)
            finally:
                if response is not None:
                    response.close()  # back to the pool if the answer was read to its end, else closed


def _failure(exc: http.UpstreamError, tried: list[str]) -> UpstreamFailed:
    where = " and ".join(tried)
    if isinstance(exc, http.TIMEOUTS) and not isinstance(exc, http.ConnectTimeout):
        return UpstreamFailed(504, f"the Ollama server at {where} did not answer in time ({describe(exc)}): "
                                   "try again in a moment")
    return UpstreamFailed(502, f"the class's Ollama server at {where} failed ({describe(exc)}): try again in a "
                               "moment; if it keeps failing, tell your instructor")


def describe(exc: BaseException) -> str:
    """A short name for a network failure, for a message a student reads."""
    if isinstance(exc, httpx.ConnectError | http.ConnectError) and not isinstance(exc, http.ConnectTimeout):
        return "cannot connect"
    if isinstance(exc, (httpx.TimeoutException, *http.TIMEOUTS)):
        return f"timed out: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def error_chunk(content_type: str | None, tail: Tail, message: str) -> bytes:
    """An error that ends a stream already under way, framed like the stream (SSE event or NDJSON line)."""
    if (content_type or "").startswith("text/event-stream"):
        # The openai client raises APIError for an event whose data has "error".
        event = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return b"\n\ndata: " + _json(event) + b"\n\n"
    return (b"" if tail.ends_line else b"\n") + _json({"error": message}) + b"\n"


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class ClientWatch:
    """Notices a client hanging up, while its request waits for an answer or the answer streams, and cancels that.

    One watcher task per request waits on ``receive`` for ``http.disconnect`` and then cancels the request's
    task, but only inside a ``with watch:`` block, which ends quietly; the work itself stays in the request's
    own task, so nothing is handed to another task (a turn of the event loop each way) on the way to the first
    byte. The watcher runs only while the request's task is suspended, so inside the block that is at one of
    the block's own awaits: the cancellation arrives there, never after the block.
    """

    def __init__(self, receive: Receive):
        self.left = False  # the client hung up
        self.task = asyncio.current_task()
        self._inside = False
        self._cancelled = False
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left = True
        if self._inside and self.task is not None:
            self._cancelled = True
            self.task.cancel()

    def __enter__(self) -> ClientWatch:
        self._inside = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self._inside = False
        if not self._cancelled or self.task is None:
            return False
        self._cancelled = False
        others = self.task.uncancel()  # ours is handled here; another cancellation (a shutdown) goes on
        return kind is not None and issubclass(kind, asyncio.CancelledError) and others == 0

    def stop(self) -> None:
        """Stop watching (the request is over)."""
        self._watcher.cancel()


class Relay(Response):
    """The rest of an :func:`exchange` sent to the student, closing it however the response ends.

    The pieces are sent from the request's own task, the moment each arrives, inside a :class:`ClientWatch`
    (the one that watched the wait for the answer, if given): when the client hangs up, closing the exchange
    closes the upstream connection, which is what stops Ollama generating for nobody. (Starlette's
    ``StreamingResponse`` does the same with a task group, which costs a task switch before the first byte.)
    """

    def __init__(self, pieces: AsyncIterator[bytes], head: Head, watch: ClientWatch | None = None):
        self.status_code = head.status
        self.background = None
        self.body_iterator = pieces
        self.raw_headers = [(b"content-type", head.content_type.encode("latin-1"))] if head.content_type else []
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self.watch
        if watch is None or watch.task is not asyncio.current_task():
            watch = ClientWatch(receive)
        try:
            if not watch.left:  # else the client left between the answer's head and now: nothing to send
                with watch:
                    await send({"type": "http.response.start", "status": self.status_code,
                                "headers": self.raw_headers})
                    async for piece in self.body_iterator:
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.stop()
            with anyio.CancelScope(shield=True):  # even when cancelled: closing is what stops the generation
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
