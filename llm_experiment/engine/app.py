"""The engine's ASGI application: Ollama's routes, its error shapes and its Host/Origin checks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from . import completion, embed, info, manage, openai_api
from .origins import OllamaAccessMiddleware
from .state import Engine
from .wire import APIError, error

log = logging.getLogger("llm_experiment.engine")


async def _not_yet(request: Request) -> Response:
    """Ollama routes this engine does not implement yet: say so plainly instead of a bare 404."""
    return error(501, f"the embedded engine does not support {request.method} {request.url.path} yet; "
                      "use a real Ollama server for it")


NOT_YET = [("/api/push", ["POST"])]
#: Ollama's OpenAI-compatible routes not built yet: 501 in OpenAI's error shape.
OPENAI_NOT_YET = ["/v1/audio/transcriptions", "/v1/messages"]


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    texts = {404: "404 page not found", 405: "405 method not allowed"}
    return PlainTextResponse(texts.get(exc.status_code, exc.detail), status_code=exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path)
    return error(500, f"internal error: {exc}")


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.engine.scheduler.prepare()  # a runner process ready before the first request
    yield
    app.state.engine.scheduler.close()  # stop the runner processes on shutdown


def create_app(engine: Engine, *, listen_host: str = "127.0.0.1", origins: list[str] | None = None) -> ASGIApp:
    """The ASGI application: Ollama's routes over ``engine``, behind Ollama's Host and Origin checks.

    ``listen_host`` is the address the server listens on (loopback servers refuse foreign Host
    headers, against DNS rebinding); ``origins`` are extra allowed browser origins (``OLLAMA_ORIGINS``).
    """
    routes = [
        Route("/", partial(info.root, engine), methods=["GET", "HEAD"]),
        Route("/api/version", partial(info.version, engine), methods=["GET", "HEAD"]),
        Route("/api/tags", partial(info.tags, engine), methods=["GET", "HEAD"]),
        Route("/api/ps", partial(info.ps, engine), methods=["GET"]),
        Route("/api/show", partial(info.show, engine), methods=["POST"]),
        Route("/api/generate", partial(completion.generate, engine), methods=["POST"]),
        Route("/api/chat", partial(completion.chat, engine), methods=["POST"]),
        Route("/api/embed", partial(embed.embed, engine), methods=["POST"]),
        Route("/api/embeddings", partial(embed.embeddings, engine), methods=["POST"]),
        Route("/api/pull", partial(manage.pull, engine), methods=["POST"]),
        Route("/api/create", partial(manage.create, engine), methods=["POST"]),
        Route("/api/copy", partial(manage.copy, engine), methods=["POST"]),
        Route("/api/delete", partial(manage.delete, engine), methods=["DELETE"]),
        Route("/api/blobs/{digest}", partial(manage.blob, engine), methods=["HEAD", "POST"]),
        Route("/v1/chat/completions", partial(openai_api.chat_completions, engine), methods=["POST"]),
        Route("/v1/completions", partial(openai_api.completions, engine), methods=["POST"]),
        Route("/v1/responses", partial(openai_api.responses, engine), methods=["POST"]),
        Route("/v1/embeddings", partial(openai_api.embeddings, engine), methods=["POST"]),
        Route("/v1/models", partial(openai_api.list_models, engine), methods=["GET"]),
        Route("/v1/models/{model}", partial(openai_api.retrieve_model, engine), methods=["GET"]),
        *(Route(path, _not_yet, methods=methods) for path, methods in NOT_YET),
        *(Route(path, openai_api.not_yet, methods=["POST"]) for path in OPENAI_NOT_YET),
    ]
    app = Starlette(routes=routes, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, Exception: _server_error,
    }, lifespan=_lifespan)
    app.state.engine = engine
    return OllamaAccessMiddleware(app, listen_host=listen_host, origins=origins)
