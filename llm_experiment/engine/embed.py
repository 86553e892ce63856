"""``/api/embed`` and the legacy ``/api/embeddings``: texts in, sentence vectors out.

As Ollama's ``EmbedHandler``: the model is loaded (an empty input only loads it), each input is cut
to the context (``truncate``, the default) or refused, its vector is L2-normalised and, with
``dimensions``, cut and normalised again. Only a model made for embeddings (its GGUF names a pooling
type, e.g. ``all-minilm``) can embed; a completion model answers 501 as current Ollama does. The
runner process computes the vectors (:meth:`.llama.LlamaModel.embed`); here they become Go's JSON.
``/v1/embeddings`` (:mod:`.openai_api`) comes through :func:`embed_vectors` too.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..hangup import unless_client_leaves
from .completion import keep_alive_of, options_of
from .options import clamp_num_ctx
from .show import context_length
from .state import Engine
from .wire import APIError, dumps, go_float, go_float32_array, go_quote

#: The most inputs one request may carry (the OpenAI API's own limit): the answer for 2048 inputs of
#: 384 dimensions is already about 9 MB of JSON. More texts go in several requests.
MAX_INPUTS = 2048


class EmbeddingFailed(APIError):
    """The model could not embed the inputs (as opposed to a bad name or a busy server)."""


@dataclass
class Embeddings:
    """What one embed request produced."""

    vectors: np.ndarray  # float32, one unit-length row per input
    prompt_eval_count: int
    load_duration: int
    total_duration: int


def inputs_of(value: Any) -> list[str]:
    """``input`` as Ollama takes it: a string (``""`` is nothing to embed) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) > MAX_INPUTS:
            raise APIError(400, f"input has {len(value)} texts; the embedded engine embeds at most {MAX_INPUTS} "
                                "per request: send them in batches")
        return value
    raise APIError(400, "invalid input type")


async def embed_vectors(engine: Engine, request: Request, body: dict[str, Any], inputs: list[str], *,
                        started: int, empty_status: int, empty_message: str, truncate: bool = True,
                        dimensions: int = 0) -> Embeddings:
    """Load the model named in ``body`` and embed ``inputs``; raise :class:`APIError` as Ollama answers."""
    name = body.get("model") or ""
    model = await engine.find(name, empty_status=empty_status, empty_message=empty_message)
    keep_alive = keep_alive_of(body)
    options = options_of(model, body)
    train_ctx = await asyncio.to_thread(context_length, model)
    num_ctx = clamp_num_ctx(options.num_ctx or engine.scheduler.default_num_ctx, train_ctx)
    # Ollama cuts inputs to the context the request asked for (even below the 4 tokens a runner
    # loads with), and to the model's training context.
    limit = train_ctx or num_ctx
    if options.num_ctx and options.num_ctx > 0:
        limit = min(options.num_ctx, limit)
    scheduled = time.perf_counter_ns()
    async with engine.scheduler.use(model, keep_alive, num_ctx) as runner:
        load_ns = max(runner.ready_ns, scheduled) - started
        if not inputs:
            return Embeddings(np.zeros((0, 0), np.float32), 0, 0, 0)
        if "embedding" not in model.capabilities:
            raise EmbeddingFailed(501, f"{go_quote(name)} does not support embeddings: it is a completion model. "
                                "Embed with an embedding model such as all-minilm")
        job = {"kind": "embed", "inputs": inputs, "truncate": truncate, "limit": limit, "dimensions": dimensions}
        done = await _until_done(runner.run(job), request)
    vectors = np.frombuffer(base64.b64decode(done["vectors"]), dtype="<f4").reshape(len(inputs), done["dim"])
    return Embeddings(vectors, done["prompt_eval_count"], load_ns, time.perf_counter_ns() - started)


async def _until_done(events: Any, request: Request) -> dict[str, Any]:
    """The job's last event; the job is cancelled if the client hangs up first (a big batch takes a while)."""

    async def last() -> dict[str, Any]:
        async for event in events:
            if event["ev"] == "done":
                return event
            if event["ev"] == "error":
                raise EmbeddingFailed(event["status"], event["message"])
        raise APIError(500, "the runner ended the job without an answer")

    try:
        done = await unless_client_leaves(request, last())
        if done is None:
            raise APIError(499, "request canceled")
        return done
    finally:
        await events.aclose()  # cancels the job in the runner if it is still going



# the routes -----------------------------------------------------------------------------------


async def embed(engine: Engine, request: Request) -> Response:
    """``POST /api/embed``: ``{"model", "embeddings": [[...]], "total_duration", "load_duration",
    "prompt_eval_count"}``."""
    started = time.perf_counter_ns()
    body = await engine.body(request, "EmbedRequest")
    inputs = inputs_of(body.get("input"))
    name = body.get("model") or ""
    result = await embed_vectors(engine, request, body, inputs, started=started, empty_status=404,
                                 empty_message=f"model '{name}' not found", truncate=body.get("truncate") is not False,
                                 dimensions=max(int(body.get("dimensions") or 0), 0))
    text = await asyncio.to_thread(_embed_json, name, result)
    return Response(text, media_type="application/json; charset=utf-8")


def _embed_json(name: str, result: Embeddings) -> str:
    """The answer as Go writes an ``api.EmbedResponse`` (``[]float32`` rows; zero durations left out)."""
    rows = ",".join(go_float32_array(row) for row in result.vectors)
    text = '{"model":' + dumps(name) + ',"embeddings":[' + rows + "]"
    for key in ("total_duration", "load_duration", "prompt_eval_count"):
        if value := getattr(result, key):
            text += f',"{key}":{value}'
    return text + "}"


async def embeddings(engine: Engine, request: Request) -> Response:
    """``POST /api/embeddings`` (legacy): one ``prompt``, ``{"embedding": [...]}`` as ``[]float64``.

    As in Ollama, the input is never cut (too long is an error) and every failure of the embedding
    itself answers 500.
    """
    started = time.perf_counter_ns()
    body = await engine.body(request, "EmbeddingRequest")
    prompt = body.get("prompt") or ""
    try:
        result = await embed_vectors(engine, request, body, [prompt] if prompt else [], started=started,
                                     empty_status=400, empty_message="model is required", truncate=False)
    except EmbeddingFailed as exc:  # name and scheduling errors keep their status
        raise APIError(500, exc.message) from None
    values = result.vectors[0] if len(result.vectors) else []
    return Response('{"embedding":[' + ",".join(go_float(float(v)) for v in values) + "]}",
                    media_type="application/json; charset=utf-8")
