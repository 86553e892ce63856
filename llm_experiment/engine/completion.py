"""``/api/generate`` and ``/api/chat``: a checked request becomes a job, a job becomes an answer.

The handlers check everything that can be checked here (names, options, ``format``, capabilities)
and describe the prompt; the runner process renders, tokenizes and generates (:mod:`.runner_main`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..hangup import unless_client_leaves
from ..protocol import normalize_name
from .models import Model
from .options import (
    DurationError,
    OptionError,
    Options,
    bound_num_predict,
    clamp_num_ctx,
    clamp_repeat_last_n,
    parse_keep_alive,
    parse_options,
)
from .runner import anyio_shield
from .show import context_length
from .state import Engine
from .wire import APIError, JSONResponse, go_quote, ndjson_line, timestamp


@dataclass
class Job:
    """A checked generate or chat request, ready to run."""

    model: Model
    name: str  # as the client spelled it; echoed in every answer
    kind: str  # "generate" or "chat"
    options: Options
    num_ctx: int
    keep_alive: float | None
    stream: bool
    spec: dict[str, Any]  # what the runner needs to build the prompt (see runner_main._prompt_tokens)
    started_ns: int
    load_only: bool = False


# the two routes ------------------------------------------------------------------------------


async def generate(engine: Engine, request: Request) -> Response:
    started = time.perf_counter_ns()
    body = await engine.body(request, "GenerateRequest")
    return await generate_body(engine, request, body, started)


async def generate_body(engine: Engine, request: Request, body: dict[str, Any], started: int) -> Response:
    """``/api/generate`` for an already-decoded body (also how ``/v1/completions`` comes in)."""
    check_top_logprobs(body)
    name = body.get("model") or ""
    model = await engine.find(name, empty_status=404, empty_message=f"model '{name}' not found")
    keep_alive = keep_alive_of(body)
    prompt = body.get("prompt") or ""
    raw = bool(body.get("raw"))
    if not prompt and keep_alive == 0:
        engine.scheduler.unload(model)
        return done_without_generating("generate", name, "unload")
    if raw and (body.get("template") or body.get("system") or body.get("context")):
        raise APIError(400, "raw mode does not support template, system, or context")
    check_completion(model, name, "generate")
    check_capabilities(model, body, insert=bool(body.get("suffix")), vision=bool(body.get("images")))
    if body.get("template"):
        raise APIError(400, "the embedded engine does not support the template field yet; leave it out")
    system = body.get("system") or model.system
    context = body.get("context")
    messages = [{"role": "system", "content": system}] if system else []
    if not context:
        messages += model.messages  # a model's MESSAGE turns, unless we continue an earlier answer
    messages.append({"role": "user", "content": prompt})
    spec = {"kind": "raw", "prompt": prompt} if raw else {
        "kind": "generate", "messages": messages, "template": model.template, "context": context or []}
    spec.update(format=format_of(body.get("format")) if prompt else None, context_out=not raw,
                logprobs=logprobs_of(body))
    job = await _job(engine, model, name, "generate", body, keep_alive, spec, started, load_only=not prompt)
    return await run(job, engine, request)


async def chat(engine: Engine, request: Request) -> Response:
    started = time.perf_counter_ns()
    body = await engine.body(request, "ChatRequest")
    return await chat_body(engine, request, body, started)


async def chat_body(engine: Engine, request: Request, body: dict[str, Any], started: int) -> Response:
    """``/api/chat`` for an already-decoded body (also how ``/v1/chat/completions`` comes in)."""
    check_top_logprobs(body)
    name = body.get("model") or ""
    model = await engine.find(name, empty_status=400, empty_message="model is required")
    keep_alive = keep_alive_of(body)
    given = [m for m in body.get("messages") or [] if m is not None]
    if not given and keep_alive == 0:
        engine.scheduler.unload(model)
        return done_without_generating("chat", name, "unload")
    check_completion(model, name, "chat")
    check_capabilities(model, body, tools=bool(body.get("tools")), vision=any(m.get("images") for m in given))
    messages = model.messages + [_message(m) for m in given]  # a model's MESSAGE turns come first
    if messages and model.system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": model.system})
    spec = {"kind": "chat", "messages": messages, "template": model.template,
            "format": format_of(body.get("format")) if given else None, "context_out": False,
            "logprobs": logprobs_of(body)}
    job = await _job(engine, model, name, "chat", body, keep_alive, spec, started, load_only=not given)
    return await run(job, engine, request)


async def _job(engine: Engine, model: Model, name: str, kind: str, body: dict[str, Any], keep_alive: float | None,
               spec: dict[str, Any], started: int, *, load_only: bool) -> Job:
    options = options_of(model, body)
    train_ctx = await asyncio.to_thread(context_length, model)
    num_ctx = clamp_num_ctx(options.num_ctx or engine.scheduler.default_num_ctx, train_ctx)
    options.num_ctx = num_ctx
    try:
        options.repeat_last_n = clamp_repeat_last_n(options.repeat_last_n, num_ctx)
    except OptionError as exc:
        raise APIError(400, str(exc)) from None
    if options.num_predict != 0:  # 0 keeps its meaning here: no new tokens
        options.num_predict = bound_num_predict(options.num_predict, num_ctx)
    spec["options"] = asdict(options)
    return Job(model=model, name=name, kind=kind, options=options, num_ctx=num_ctx, keep_alive=keep_alive,
               stream=body.get("stream") is not False, spec=spec, started_ns=started, load_only=load_only)


def _message(m: dict[str, Any]) -> dict[str, str]:
    """A chat message as the template needs it; roles are lower-cased, as Ollama does."""
    return {"role": (m.get("role") or "").lower(), "content": m.get("content") or ""}


# checks ---------------------------------------------------------------------------------------


def check_top_logprobs(body: dict[str, Any]) -> None:
    top = body.get("top_logprobs") or 0
    if not 0 <= top <= 20:
        raise APIError(400, "top_logprobs must be between 0 and 20")


def logprobs_of(body: dict[str, Any]) -> int | None:
    """How many alternatives to report per token, or ``None`` when logprobs are not wanted."""
    return (body.get("top_logprobs") or 0) if body.get("logprobs") else None


def keep_alive_of(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except DurationError as exc:
        raise APIError(400, str(exc)) from None


def check_completion(model: Model, name: str, route: str) -> None:
    """An embedding model cannot generate text: Ollama's 400 ``"all-minilm" does not support generate``."""
    if "completion" not in model.capabilities:
        raise APIError(400, f"{go_quote(name)} does not support {route}")


def check_capabilities(model: Model, body: dict[str, Any], *, insert: bool = False, tools: bool = False,
                       vision: bool = False) -> None:
    """Refuse what the model cannot do, with Ollama's messages."""
    full = normalize_name(model.name) or model.name
    missing = [cap for cap, wanted in (("insert", insert), ("tools", tools), ("vision", vision))
               if wanted and cap not in model.capabilities]
    if missing:
        raise APIError(400, "\n".join(f"{full} does not support {cap}" for cap in missing))
    think = body.get("think")
    if think not in (None, False) and "thinking" not in model.capabilities:
        raise APIError(400, f'"{body.get("model")}" does not support thinking')


def options_of(model: Model, body: dict[str, Any]) -> Options:
    try:
        return parse_options(body.get("options"), model.parameters)
    except OptionError as exc:
        raise APIError(500, str(exc)) from None  # Ollama answers a wrongly typed option with 500


#: A schema larger or deeper than this is refused before any grammar is built from it.
MAX_SCHEMA_NODES = 10_000
MAX_SCHEMA_DEPTH = 64
INVALID_SCHEMA = "invalid JSON schema in format"


def format_of(fmt: Any) -> str | dict[str, Any] | None:
    """``format`` checked: ``None``, ``"json"`` or a JSON schema object the runner can turn into a grammar."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return "json"
    if not isinstance(fmt, dict):
        raw = json.dumps(fmt, separators=(",", ":"))
        raise APIError(500, f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object')
    _check_schema(fmt)
    return fmt


def _check_schema(schema: dict[str, Any]) -> None:
    """Refuse schemas that cannot describe any JSON value, or that llama.cpp's converter mishandles
    (an empty ``enum``/``anyOf``, property names with quotes or control characters), and huge ones."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES or depth > MAX_SCHEMA_DEPTH:
            raise APIError(500, f"{INVALID_SCHEMA}: too large or too deeply nested")
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        for key in ("enum", "anyOf", "oneOf", "allOf"):
            if key in node and (not isinstance(node[key], list) or not node[key]):
                raise APIError(500, f"{INVALID_SCHEMA}: {key} must be a non-empty list")
        properties = node.get("properties")
        if isinstance(properties, dict):
            for prop in properties:
                if any(c in prop for c in '"\\') or any(ord(c) < 32 for c in prop):
                    raise APIError(500, f"{INVALID_SCHEMA}: property name {json.dumps(prop)} is not supported")
        stack.extend((value, depth + 1) for value in node.values())


# running a job --------------------------------------------------------------------------------


def chunk(kind: str, name: str, text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One streamed piece, in the endpoint's shape (fields in the order Ollama's structs give them)."""
    if kind == "chat":
        obj = {"model": name, "created_at": timestamp(), "message": {"role": "assistant", "content": text},
               "done": False}
    else:
        obj = {"model": name, "created_at": timestamp(), "response": text, "done": False}
    if logprobs:
        obj["logprobs"] = logprobs
    return obj


def final(job: Job, text: str, done: dict[str, Any], load_ns: int,
          logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The last object: ``done``, ``done_reason``, (``context``), the timings and (``logprobs``).

    ``prompt_eval_count`` is the whole prompt and ``prompt_eval_cached_count`` the part reused from
    the previous request, as current Ollama reports them; ``prompt_eval_duration`` is the rest's.
    """
    obj = chunk(job.kind, job.name, text)
    obj["done"] = True
    obj["done_reason"] = done["done_reason"]
    if job.kind == "chat" and logprobs:
        obj["logprobs"] = logprobs  # ChatResponse has them before its metrics, GenerateResponse after
    if "context" in done:
        obj["context"] = done["context"]
    obj.update(
        total_duration=time.perf_counter_ns() - job.started_ns,
        load_duration=load_ns,
        prompt_eval_count=done["prompt_eval_count"],
        prompt_eval_cached_count=done["prompt_eval_cached_count"],
        prompt_eval_duration=done["prompt_eval_duration"],
        eval_count=done["eval_count"],
        eval_duration=done["eval_duration"],
    )
    if job.kind == "generate" and logprobs:
        obj["logprobs"] = logprobs
    return obj


def done_without_generating(kind: str, name: str, reason: str) -> JSONResponse:
    """The answer to a load (no prompt) or an unload (no prompt, keep_alive 0)."""
    obj = chunk(kind, name, "")
    obj.update(done=True, done_reason=reason)
    return JSONResponse(obj)


async def _first(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The first event that says something (text, the end or an error); progress reports are skipped."""
    async for event in events:
        if event["ev"] != "progress":
            return event
    raise APIError(500, "the runner ended the job without an answer")


class ReleasingStream(StreamingResponse):
    """A streaming response that stops the job, then frees the model, however the response ends."""

    def __init__(self, content: AsyncIterator[bytes], stack: AsyncExitStack,
                 media_type: str = "application/x-ndjson"):
        super().__init__(content, media_type=media_type)
        self._stack = stack

    def rewrapped(self, content: AsyncIterator[bytes], media_type: str) -> ReleasingStream:
        """The same job's stream with other bytes; ``content`` must close this body when it is closed."""
        return ReleasingStream(content, self._stack, media_type)

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio_shield():
                # First end the generator (it cancels the job and waits for the runner), only then
                # release the model: the next request must never find the runner still busy.
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._stack.aclose()


async def run(job: Job, engine: Engine, request: Request) -> Response:
    """Wait for the model, then answer: one JSON object, or NDJSON lines as the text is made."""
    stack = AsyncExitStack()
    scheduled_ns = time.perf_counter_ns()
    runner = await stack.enter_async_context(engine.scheduler.use(job.model, job.keep_alive, job.num_ctx))
    # As in Ollama, load_duration runs until a loaded model is there for this request: it includes
    # loading (ours, or another request's we waited for) but not the wait behind other requests'
    # generations on a model already loaded (Ollama waits for the runner's slot after that point).
    load_ns = max(runner.ready_ns, scheduled_ns) - job.started_ns
    try:
        if await request.is_disconnected():  # the client gave up while it waited its turn: nothing to do
            await stack.aclose()
            return Response(status_code=499)
        if job.load_only:
            await stack.aclose()
            return done_without_generating(job.kind, job.name, "load")
        events = runner.run(job.spec)
        stack.push_async_callback(events.aclose)
        if job.stream:
            first = await _first(events)  # as Ollama: an error before any text gets its own status
            if first["ev"] == "error":
                raise APIError(first["status"], first["message"])
            return ReleasingStream(_ndjson(first, events, job, load_ns), stack)
    except BaseException:
        with anyio_shield():
            await stack.aclose()
        raise
    async with stack:
        collected = await unless_client_leaves(request, _collect(events))
        if collected is None:  # the client went away: the generation was stopped
            return Response(status_code=499)  # nobody is listening; Ollama logs 499 too
        texts, logprobs, last = collected
        if last["ev"] == "error":
            raise APIError(last["status"], last["message"])
        return JSONResponse(final(job, "".join(texts), last, load_ns, logprobs))


async def _collect(events: AsyncIterator[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    texts: list[str] = []
    logprobs: list[dict[str, Any]] = []
    async for event in events:
        if event["ev"] == "piece":
            texts.append(event["text"])
            logprobs += event.get("logprobs", [])
        elif event["ev"] in ("done", "error"):
            return texts, logprobs, event
    raise APIError(500, "the runner ended the job without an answer")


async def _ndjson(first: dict[str, Any], events: AsyncIterator[dict[str, Any]], job: Job,
                  load_ns: int) -> AsyncIterator[bytes]:
    async def all_events() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for event in events:
            yield event

    async for event in all_events():
        if event["ev"] == "piece":
            yield ndjson_line(chunk(job.kind, job.name, event["text"], event.get("logprobs")))
        elif event["ev"] == "done":
            yield ndjson_line(final(job, "", event, load_ns))
            return
        elif event["ev"] == "error":  # after the first line, errors travel in the stream
            yield ndjson_line({"error": event["message"]})
            return
