"""``/api/generate`` and ``/api/chat``: from a checked request to a streamed or whole answer."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio
import llama_cpp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .models import Model, normalize_name
from .options import DurationError, OptionError, Options, parse_keep_alive, parse_options
from .runner import Generation, Runner
from .scheduler import Scheduler
from .wire import APIError, JSONResponse, ndjson_line, timestamp

log = logging.getLogger("llm_experiment.engine")


@dataclass
class Job:
    """A checked generate or chat request, ready to run."""

    model: Model
    name: str  # as the client spelled it; echoed in every answer
    kind: str  # "generate" or "chat"
    options: Options
    keep_alive: float | None
    stream: bool
    grammar: llama_cpp.LlamaGrammar | None
    build_prompt: Callable[[Runner], list[int]]
    context_out: bool  # generate (not raw) returns the token context
    started_ns: int


# checks shared by both endpoints -------------------------------------------------------------


def keep_alive_of(body: dict[str, Any]) -> float | None:
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except DurationError as exc:
        raise APIError(400, str(exc)) from None


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


@lru_cache(maxsize=1)
def _json_grammar() -> llama_cpp.LlamaGrammar:
    return llama_cpp.LlamaGrammar.from_string(llama_cpp.llama_grammar.JSON_GBNF, verbose=False)


def grammar_of(fmt: Any) -> llama_cpp.LlamaGrammar | None:
    """``format``: ``"json"`` or a JSON schema becomes a grammar that constrains decoding."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return _json_grammar()
    if not isinstance(fmt, dict):
        raw = json.dumps(fmt, separators=(",", ":"))
        raise APIError(500, f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object')
    try:
        return llama_cpp.LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    except Exception:  # noqa: BLE001 - llama-cpp-python raises several kinds for a schema it cannot convert
        raise APIError(500, "invalid JSON schema in format") from None


# running a job --------------------------------------------------------------------------------


class _Finished:
    def __init__(self, outcome: Generation | BaseException):
        self.outcome = outcome


async def pieces(runner: Runner, prompt: list[int], job: Job,
                 cancel: threading.Event) -> AsyncIterator[str | Generation]:
    """Run the generation in a worker thread; yield text pieces as they come, then the :class:`Generation`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | _Finished] = asyncio.Queue()

    def emit(piece: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, piece)

    def work() -> None:
        try:
            outcome: Generation | BaseException = runner.generate(prompt, job.options, emit, cancel.is_set, job.grammar)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop and raised there
            outcome = exc
        loop.call_soon_threadsafe(queue.put_nowait, _Finished(outcome))

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Finished):
                if isinstance(item.outcome, BaseException):
                    raise item.outcome
                yield item.outcome
                return
            yield item
    finally:
        cancel.set()  # the client went away or an error happened: stop the thread after this token
        with anyio.CancelScope(shield=True):
            await worker  # the model is free only once the thread has stopped


def chunk(kind: str, name: str, text: str) -> dict[str, Any]:
    """One streamed piece, in the endpoint's shape."""
    if kind == "chat":
        return {"model": name, "created_at": timestamp(), "message": {"role": "assistant", "content": text},
                "done": False}
    return {"model": name, "created_at": timestamp(), "response": text, "done": False}


def final(job: Job, text: str, gen: Generation, load_ns: int) -> dict[str, Any]:
    """The last object: ``done``, ``done_reason``, (``context``) and the six timings."""
    obj = chunk(job.kind, job.name, text)
    obj["done"] = True
    obj["done_reason"] = gen.done_reason
    if job.context_out:
        obj["context"] = gen.prompt_tokens + gen.output_tokens
    obj.update(
        total_duration=time.perf_counter_ns() - job.started_ns,
        load_duration=load_ns,
        prompt_eval_count=gen.prompt_eval_count,
        prompt_eval_duration=gen.prompt_eval_duration,
        eval_count=gen.eval_count,
        eval_duration=gen.eval_duration,
    )
    return obj


def done_without_generating(kind: str, name: str, reason: str) -> JSONResponse:
    """The answer to a load (no prompt) or an unload (no prompt, keep_alive 0)."""
    obj = chunk(kind, name, "")
    obj.update(done=True, done_reason=reason)
    return JSONResponse(obj)


class _ReleasingStream(StreamingResponse):
    """A streaming response that frees the model when it ends, however it ends."""

    def __init__(self, content: AsyncIterator[bytes], stack: AsyncExitStack):
        super().__init__(content, media_type="application/x-ndjson")
        self._stack = stack

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stack.aclose()


async def run(job: Job, scheduler: Scheduler, request: Request, *, load_only: bool = False) -> Response:
    """Wait for the model, then answer: one JSON object, or NDJSON lines as the text is made."""
    stack = AsyncExitStack()
    runner = await stack.enter_async_context(scheduler.use(job.model, job.keep_alive, job.options.num_ctx))
    # As in Ollama, load_duration is the time until the model was ready for us: queueing plus loading.
    load_ns = time.perf_counter_ns() - job.started_ns
    try:
        if load_only:
            return done_without_generating(job.kind, job.name, "load")
        prompt = job.build_prompt(runner)
    except BaseException:
        await stack.aclose()
        raise
    cancel = threading.Event()
    if job.stream:
        return _ReleasingStream(_ndjson(runner, prompt, job, cancel, load_ns), stack)
    async with stack:
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        try:
            texts: list[str] = []
            async for item in pieces(runner, prompt, job, cancel):
                if isinstance(item, Generation):
                    if item.cancelled:
                        return Response(status_code=499)  # nobody is listening; Ollama logs 499 too
                    return JSONResponse(final(job, "".join(texts), item, load_ns))
                texts.append(item)
        finally:
            watcher.cancel()
    raise AssertionError("generation ended without a result")


async def _ndjson(runner: Runner, prompt: list[int], job: Job, cancel: threading.Event,
                  load_ns: int) -> AsyncIterator[bytes]:
    try:
        async for item in pieces(runner, prompt, job, cancel):
            if isinstance(item, Generation):
                yield ndjson_line(final(job, "", item, load_ns))
            else:
                yield ndjson_line(chunk(job.kind, job.name, item))
    except Exception as exc:  # noqa: BLE001 - after the first line, errors travel in the stream
        log.exception("generation failed")
        yield ndjson_line({"error": str(exc)})


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client hangs up while we compute a non-streamed answer."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return
