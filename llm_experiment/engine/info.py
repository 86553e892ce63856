"""The routes that only tell: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps`` and ``/api/show``."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ..protocol import display_name, normalize_name
from .prompt import CHATML_TEMPLATE
from .show import list_details, show_response
from .state import Engine
from .wire import APIError, JSONResponse, local_time

try:
    from importlib.metadata import version as _version

    VERSION = _version("llm-experiment")
except Exception:  # noqa: BLE001 - running from a checkout that was not pip-installed
    VERSION = "0.1.0"


async def root(engine: Engine, request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(engine: Engine, request: Request) -> Response:
    return JSONResponse({"version": VERSION})


async def tags(engine: Engine, request: Request) -> Response:
    def rows() -> list[dict[str, Any]]:  # reads manifests and GGUF headers, hashes the bundled weights once
        # Ollama's ListModelResponse: newest first, capabilities after details (left out when empty).
        models = sorted(engine.store.all(), key=lambda m: m.modified_ns, reverse=True)
        out = []
        for m in models:
            row = {"name": m.name, "model": m.name, "modified_at": local_time(m.modified_ns), "size": m.size,
                   "digest": m.manifest_digest(), "details": list_details(m)}
            if m.capabilities:
                row["capabilities"] = list(m.capabilities)
            out.append(row)
        return out

    return JSONResponse({"models": await asyncio.to_thread(rows)})


async def ps(engine: Engine, request: Request) -> Response:
    loaded = engine.scheduler.loaded()

    def rows() -> list[dict[str, Any]]:
        out = []
        for name, runner, expires_ns in loaded:  # details without parent_model: Ollama's PsHandler leaves it empty
            m = engine.store.get(name) or runner.model  # as listed now (a pull may have copied it into the store)
            out.append({"name": name, "model": name, "size": m.size, "digest": m.manifest_digest(),
                        "details": {**m.details, "parent_model": ""}, "expires_at": local_time(expires_ns),
                        "size_vram": 0, "context_length": runner.num_ctx})
        return out

    return JSONResponse({"models": await asyncio.to_thread(rows)})


async def show(engine: Engine, request: Request) -> Response:
    """Ollama's ``ShowHandler``: the Modelfile, GGUF metadata and tensors; tokenizer arrays with ``verbose``."""
    body = await engine.body(request, "ShowRequest")
    name = body.get("model") or body.get("name") or ""
    if not name.strip():
        raise APIError(400, "model is required")
    full = normalize_name(name)
    if full is None:
        raise APIError(400, "invalid model name")
    model = await asyncio.to_thread(engine.store.get, name)
    if model is None:  # Ollama names the model as it parsed it, tag included
        raise APIError(404, f"model '{display_name(full)}' not found")
    verbose = body.get("verbose") is True
    system, options = body.get("system") or "", body.get("options") or {}

    def answer() -> Response:  # the GGUF header, and (verbose) 100k tokenizer strings to encode: in a thread
        return JSONResponse(show_response(model, model.template or CHATML_TEMPLATE, verbose=verbose,
                                          system=system, options=options))

    return await asyncio.to_thread(answer)
