"""The routes that only tell: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps`` and ``/api/show``."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ..protocol import normalize_name
from .prompt import CHATML_TEMPLATE
from .show import model_info, modelfile_text, parameters_text
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
    def rows() -> list[dict[str, Any]]:  # reads manifests, and hashes the bundled weights once: in a thread
        models = sorted(engine.store.all(), key=lambda m: m.modified_ns, reverse=True)
        return [{"name": m.name, "model": m.name, "modified_at": local_time(m.modified_ns), "size": m.size,
                 "digest": m.manifest_digest(), "details": m.details} for m in models]

    return JSONResponse({"models": await asyncio.to_thread(rows)})


async def ps(engine: Engine, request: Request) -> Response:
    loaded = engine.scheduler.loaded()

    def rows() -> list[dict[str, Any]]:
        out = []
        for name, runner, expires_ns in loaded:
            m = engine.store.get(name) or runner.model  # as listed now (a pull may have copied it into the store)
            out.append({"name": name, "model": name, "size": m.size, "digest": m.manifest_digest(),
                        "details": m.details, "expires_at": local_time(expires_ns), "size_vram": 0,
                        "context_length": runner.num_ctx})
        return out

    return JSONResponse({"models": await asyncio.to_thread(rows)})


async def show(engine: Engine, request: Request) -> Response:
    body = await engine.body(request, "ShowRequest")
    name = body.get("model") or body.get("name") or ""
    if not name.strip():
        raise APIError(400, "model is required")
    if normalize_name(name) is None:
        raise APIError(400, "invalid model name")
    model = await asyncio.to_thread(engine.store.get, name)
    if model is None:
        raise APIError(404, f"model '{name}' not found")
    template = model.template or CHATML_TEMPLATE
    answer: dict[str, Any] = {
        "license": "\n".join(model.license),
        "modelfile": modelfile_text(model, template),
        "parameters": parameters_text(model.parameters),
        "template": template,
        "system": model.system,
        "details": model.details,
        "messages": model.messages or "",
        "model_info": await asyncio.to_thread(model_info, model),
        "capabilities": model.capabilities,
        "modified_at": local_time(model.modified_ns),
    }
    # Go leaves out empty strings (omitempty); model_info stays, the ollama client requires it.
    return JSONResponse({k: v for k, v in answer.items() if v != "" or k == "model_info"})
