"""A chatbot microservice: OpenAI's ``chat.completion`` shape in front of any Ollama server (notebook 08).

Routes::

    POST /v1/example-service   {"messages": "Hi"} or {"messages": [{"role": "user", "content": "Hi"}], ...}
    GET  /health               200 when the upstream Ollama answers and has the model, 503 otherwise
    GET  /openapi.json         the OpenAPI 3.1 schema (from the pydantic models in chatbot_schema.py)
    GET  /docs                 the same as a self-contained HTML page

Run it: ``llm-experiment chatbot`` (upstream: ``$OLLAMA_HOST``, else http://127.0.0.1:11434; listens on
127.0.0.1:9000), or serve ``create_app()`` with any ASGI server. Then::

    curl -s localhost:9000/v1/example-service -d '{"messages": "Why is the sky blue?", "max_tokens": 40}'

The official ``openai`` client has no method for a custom path, but its generic ``post`` reaches one, and parses
the answer (or each streamed chunk) into its own types and our errors into its exceptions::

    from openai import OpenAI, Stream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    client = OpenAI(base_url="http://127.0.0.1:9000/v1", api_key="unused")
    reply = client.post("/example-service", cast_to=ChatCompletion, body={"messages": "Hi", "max_tokens": 20})
    print(reply.choices[0].message.content, reply.usage.completion_tokens)
    for chunk in client.post("/example-service", cast_to=ChatCompletionChunk, stream=True,
                             stream_cls=Stream[ChatCompletionChunk], body={"messages": "Hi", "stream": True}):
        if chunk.choices:  # the last chunk has none, only the usage
            print(chunk.choices[0].delta.content or "", end="")

How it works: each request becomes one streamed call to the upstream's ``/api/chat``. A non-streamed answer joins
the pieces; a streamed one turns each NDJSON line into a server-sent event. Either way the upstream request lives
exactly as long as our client's: when the client hangs up, we close the upstream connection and Ollama stops
generating. Upstream calls use ``httpx.AsyncClient`` (the library under ``ollama.AsyncClient``) directly, because
the service needs what that client hides: the upstream's HTTP status, separate connect and read timeouts, and
the raw lines to relay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .bodies import TooLarge, read_bounded
from .chatbot_schema import (
    MAX_BODY,
    MAX_TOKENS,
    ROUTE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorDetail,
    Health,
    UpstreamHealth,
    Usage,
    docs_page,
    openapi_document,
)
from .hangup import unless_client_leaves
from .hosts import default_model, server_url
from .protocol import name_key, normalize_name

log = logging.getLogger("llm_experiment.chatbot")

HEALTH_TIMEOUT = httpx.Timeout(3.0, connect=2.0)  # a healthcheck must answer quickly, whatever the upstream does
START_HINT = "Check OLLAMA_HOST or --upstream, and that `ollama serve` or `llm-experiment serve` runs there."


@dataclass(frozen=True)
class Settings:
    """What one service instance talks to, and how patiently (seconds)."""

    upstream: str
    model: str
    system: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 120.0  # between two pieces of an answer: long enough for a cold model load


# --- errors: one JSON shape, OpenAI's -------------------------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
               422: "invalid_request_error", 500: "server_error", 502: "upstream_error", 504: "upstream_error"}


class ServiceError(Exception):
    """An answer other than 200, with a message saying what failed and what to try."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return ErrorBody(error=ErrorDetail(message=self.message, type=kind, param=self.param,
                                           code=self.code)).model_dump()

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(exc: ValidationError) -> ServiceError:
    """A pydantic error as 400 (not JSON at all) or 422 (JSON, but not what the schema says), listing each fault."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        reason = errors[0]["msg"].removeprefix("Invalid JSON: ")
        return ServiceError(400, f"The body is not valid JSON: {reason}.", "invalid_json")
    where = [".".join(str(part) for part in e["loc"]) or "body" for e in errors]
    faults = "; ".join(f"{path}: {e['msg']}" for path, e in zip(where, errors, strict=True))
    return ServiceError(422, f"The request does not match the schema (see /docs): {faults}", "invalid_request",
                        param=where[0])


def upstream_failure(exc: httpx.HTTPError, settings: Settings) -> ServiceError:
    """A network failure talking to the upstream server, as 504 (too slow) or 502 (unreachable, cut off)."""
    where = settings.upstream
    if isinstance(exc, httpx.ConnectTimeout):
        return ServiceError(504, f"Could not connect to the Ollama server at {where} within "
                                 f"{settings.connect_timeout:g} s. {START_HINT}", "upstream_timeout")
    if isinstance(exc, httpx.TimeoutException):
        return ServiceError(504, f"The Ollama server at {where} did not answer within {settings.read_timeout:g} s "
                                 "(a cold model can take long to load: try again).", "upstream_timeout")
    if isinstance(exc, httpx.ConnectError):
        return ServiceError(502, f"Cannot reach the Ollama server at {where} ({exc}). {START_HINT}",
                            "upstream_unreachable")
    return ServiceError(502, f"The connection to the Ollama server at {where} failed: {exc!r}", "upstream_error")


def upstream_refusal(status: int, text: str, settings: Settings, model: str) -> ServiceError:
    """The upstream answered with an error status: 404 (no such model), 400 (it refused the request), else 502."""
    if status == 404:  # Ollama's only 404 for /api/chat
        return ServiceError(404, f"The Ollama server at {settings.upstream} has no model '{model}': pull it first: "
                                 f"`ollama pull {model}`.", "model_not_found", param="model")
    try:
        message = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:500] or f"HTTP {status}"
    if status == 400:  # about what the client sent (a malformed model name, a model that cannot chat...)
        return ServiceError(400, f"The Ollama server refused the request: {message}", "upstream_refused")
    return ServiceError(502, f"The Ollama server at {settings.upstream} failed with {status}: {message}",
                        "upstream_error")


# --- reading the request --------------------------------------------------------------------------------------------


async def read_request(request: Request) -> ChatRequest:
    """The body, at most MAX_BODY bytes, validated against ChatRequest."""
    try:
        raw = await read_bounded(request, MAX_BODY)
    except TooLarge:
        raise ServiceError(413, f"The body is larger than {MAX_BODY} bytes.", "body_too_large") from None
    except ClientDisconnect:  # gone (or stalled, then cut off by uvicorn) mid-body: nobody will read this answer
        raise ServiceError(400, "The client left before sending the whole body.", "incomplete_body") from None
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc) from None


def ollama_request(chat: ChatRequest, settings: Settings) -> dict[str, Any]:
    """The upstream ``/api/chat`` body: our system prompt first when the client sent none."""
    messages = [m.model_dump() for m in chat.messages]
    if settings.system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": settings.system})
    options: dict[str, Any] = {"num_predict": chat.max_tokens or MAX_TOKENS}
    if chat.temperature is not None:
        options["temperature"] = chat.temperature
    return {"model": chat.model or settings.model, "messages": messages, "stream": True, "options": options}


# --- talking to the upstream Ollama server --------------------------------------------------------------------------


async def open_chat(client: httpx.AsyncClient, settings: Settings, body: dict[str, Any]) -> httpx.Response:
    """Send ``/api/chat`` and wait for the status line; the caller reads the NDJSON lines, then closes it."""
    request = client.build_request("POST", f"{settings.upstream}/api/chat", json=body)
    try:
        response = await client.send(request, stream=True)
        if response.status_code == 200:
            return response
        try:
            text = (await response.aread()).decode(errors="replace")
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        raise upstream_failure(exc, settings) from None
    raise upstream_refusal(response.status_code, text, settings, body["model"])


async def ollama_lines(response: httpx.Response, settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The upstream's NDJSON lines as dicts, up to the one with ``done``; its errors as ServiceError."""
    try:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise ServiceError(502, f"The Ollama server sent a line that is not JSON: {line[:200]!r}",
                                   "upstream_error") from None
            if "error" in obj:  # an error after the answer began travels in the stream
                raise ServiceError(502, f"The Ollama server failed while answering: {obj['error']}", "upstream_error")
            yield obj
            if obj.get("done"):
                return
    except httpx.HTTPError as exc:
        raise upstream_failure(exc, settings) from None
    raise ServiceError(502, "The Ollama server ended its answer too early.", "upstream_error")


def finish_reason(last: dict[str, Any]) -> str:
    return "length" if last.get("done_reason") == "length" else "stop"


def usage(last: dict[str, Any]) -> Usage | None:
    """The upstream's own token counts; None if it did not give them (never made-up zeros)."""
    prompt, completion = last.get("prompt_eval_count"), last.get("eval_count")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def complete(client: httpx.AsyncClient, settings: Settings, body: dict[str, Any]) -> ChatCompletion:
    """The whole answer as one ``chat.completion``."""
    started = time.perf_counter()
    response = await open_chat(client, settings, body)
    pieces: list[str] = []
    last: dict[str, Any] = {}
    try:
        async for last in ollama_lines(response, settings):
            pieces.append((last.get("message") or {}).get("content", ""))
    finally:
        await response.aclose()
    log_answer(body["model"], last, started)
    choice = Choice(message=AssistantMessage(content="".join(pieces)), finish_reason=finish_reason(last))
    return ChatCompletion(id=f"chatcmpl-{secrets.token_hex(12)}", created=int(time.time()), model=body["model"],
                          choices=[choice], usage=usage(last))


def log_answer(model: str, last: dict[str, Any], started: float) -> None:
    """One line per answer: what the tokens cost."""
    log.info("%s: %s prompt + %s completion tokens, %s, %.1f s", model, last.get("prompt_eval_count", "?"),
             last.get("eval_count", "?"), finish_reason(last), time.perf_counter() - started)


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def chunks(response: httpx.Response, settings: Settings, model: str, started: float) -> AsyncIterator[bytes]:
    """The upstream's lines as ``chat.completion.chunk`` events, as OpenAI streams with ``include_usage``."""
    cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

    def event(choices: list[ChunkChoice], use: Usage | None = None) -> bytes:
        return sse(ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, usage=use).model_dump())

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
    try:
        async for obj in ollama_lines(response, settings):
            content = (obj.get("message") or {}).get("content", "")
            if content:
                yield event([ChunkChoice(delta=Delta(content=content))])
            if obj.get("done"):
                yield event([ChunkChoice(delta=Delta(), finish_reason=finish_reason(obj))])
                if (counts := usage(obj)) is not None:
                    yield event([], counts)
                yield b"data: [DONE]\n\n"
                log_answer(model, obj, started)
    except ServiceError as exc:  # the status line has gone: the error can only travel in the stream
        log.warning("%s", exc.message)
        yield sse(exc.body())
    except Exception:  # noqa: BLE001 - a bug: log it, and still end the stream in the documented shape
        log.exception("internal error while streaming")
        yield sse(ServiceError(500, "Internal error in the chatbot service (logged).", "internal_error").body())


class Relay(StreamingResponse):
    """A streamed answer that closes the upstream request however it ends (done, error, or client gone)."""

    def __init__(self, content: AsyncIterator[bytes], upstream: httpx.Response):
        super().__init__(content, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        self.upstream = upstream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)  # Starlette stops sending when the client hangs up
        finally:
            with anyio.CancelScope(shield=True):  # even when cancelled: closing is what stops the generation
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self.upstream.aclose()


# --- the routes ----------------------------------------------------------------------------------------------------


async def chat(request: Request) -> Response:
    """``POST /v1/example-service``."""
    settings: Settings = request.app.state.settings
    client: httpx.AsyncClient = request.app.state.client
    asked = await read_request(request)
    body = ollama_request(asked, settings)
    started = time.perf_counter()
    if asked.stream:
        upstream = await open_chat(client, settings, body)  # errors before the first byte keep their status
        return Relay(chunks(upstream, settings, body["model"], started), upstream)
    answer = await unless_client_leaves(request, complete(client, settings, body))
    if answer is None:
        log.info("%s: the client left after %.1f s; generation stopped", body["model"], time.perf_counter() - started)
        return Response(status_code=499)  # nobody reads it; 499 is what nginx and Ollama log for this
    return JSONResponse(answer.model_dump())


async def health(request: Request) -> Response:
    """``GET /health``: 200 when the upstream answers and lists the model, 503 otherwise (within a few seconds)."""
    settings: Settings = request.app.state.settings
    client: httpx.AsyncClient = request.app.state.client
    report = UpstreamHealth(url=settings.upstream, reachable=False, model=settings.model, model_present=False)
    try:
        response = await client.get(f"{settings.upstream}/api/tags", timeout=HEALTH_TIMEOUT)
    except httpx.HTTPError as exc:
        quick = replace(settings, connect_timeout=HEALTH_TIMEOUT.connect, read_timeout=HEALTH_TIMEOUT.read)
        report.error = upstream_failure(exc, quick).message
    else:
        report.reachable = True
        names = listed_models(response)
        if names is None:
            report.error = (f"The server at {settings.upstream} answered /api/tags with {response.status_code}, "
                            "not with Ollama's list of models.")
        elif not any(same_model(name, settings.model) for name in names):
            report.error = f"No model {settings.model} there: pull it first: `ollama pull {settings.model}`."
        else:
            report.model_present = True
    ok = report.reachable and report.model_present
    return JSONResponse(Health(status="ok" if ok else "degraded", upstream=report).model_dump(),
                        status_code=200 if ok else 503)


def listed_models(response: httpx.Response) -> list[str] | None:
    """The model names in an ``/api/tags`` answer; None if it is not one."""
    if response.status_code != 200:
        return None
    try:
        return [m.get("model") or m["name"] for m in response.json()["models"] or []]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def same_model(a: str, b: str) -> bool:
    """Whether two names are one model, as Ollama compares them (``smollm2`` is ``smollm2:latest``)."""
    full_a, full_b = normalize_name(a), normalize_name(b)
    return full_a is not None and full_b is not None and name_key(full_a) == name_key(full_b)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(request.app.state.openapi)


async def docs(request: Request) -> Response:
    """``GET /docs``: the schema as a page that needs nothing from the internet."""
    return HTMLResponse(docs_page(request.app.state.openapi, str(request.base_url).rstrip("/")))


# --- every failure answers in the one error shape -------------------------------------------------------------------


async def on_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return exc.response()


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method), in our shape; 405 keeps its Allow header."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return ServiceError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}. See /docs.",
                        code).response(headers=exc.headers)


async def on_bug(request: Request, exc: Exception) -> Response:
    """Anything else is a bug: a clean 500 for the client; the server logs the traceback (Starlette re-raises)."""
    log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
    return ServiceError(500, "Internal error in the chatbot service (logged).", "internal_error").response()


def create_app(upstream: str | None = None, model: str | None = None, system: str | None = None, *,
               connect_timeout: float = 5.0, read_timeout: float = 120.0) -> Starlette:
    """The service as an ASGI app, for ``uvicorn`` or any ASGI server.

    ``upstream`` is the Ollama server (``OLLAMA_HOST`` form; default ``$OLLAMA_HOST`` or http://127.0.0.1:11434),
    ``model`` the model used when a request names none (default ``$LLM_MODEL`` or smollm2:135m), ``system`` a system
    prompt put first in conversations that have none. Timeouts are in seconds; ``read_timeout`` bounds each wait for
    the upstream (its first byte, then each next piece), not the whole answer.
    """
    settings = Settings(server_url(upstream), model or default_model(), system, connect_timeout, read_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One connection pool for the app's lifetime; closing it at shutdown ends upstream requests still open.
        async with httpx.AsyncClient(timeout=httpx.Timeout(read_timeout, connect=connect_timeout)) as client:
            app.state.client = client
            yield

    app = Starlette(
        routes=[Route(ROUTE, chat, methods=["POST"]), Route("/health", health, methods=["GET"]),
                Route("/openapi.json", openapi, methods=["GET"]), Route("/docs", docs, methods=["GET"])],
        exception_handlers={ServiceError: on_service_error, HTTPException: on_http_error, Exception: on_bug},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.openapi = openapi_document(settings.model, settings.upstream)
    return app


def serve(host: str = "127.0.0.1", port: int = 9000, *, log_level: str = "info", **app_options: Any) -> int:
    """Run the service with uvicorn until Ctrl-C or SIGTERM; return an exit code. ``app_options`` go to create_app."""
    from .engine.connections import listen, serve_until_stopped

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if log_level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # its line per upstream call repeats ours
    app = create_app(**app_options)
    sock = listen(host, port, "the service")
    if sock is None:
        return 1
    settings: Settings = app.state.settings
    shown = f"[{host}]" if ":" in host else host
    print(f"llm-experiment chatbot: http://{shown}:{sock.getsockname()[1]}{ROUTE} -> {settings.upstream} "
          f"({settings.model}); docs at /docs. Ctrl-C to stop.", file=sys.stderr, flush=True)
    serve_until_stopped(app, sock, log_level=log_level, access_log=True)
    print("llm-experiment chatbot: stopped", file=sys.stderr)
    return 0
