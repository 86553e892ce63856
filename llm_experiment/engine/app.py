"""The HTTP routes of the embedded engine, answering as Ollama does."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from . import manage
from .completion import Job, check_capabilities, done_without_generating, grammar_of, keep_alive_of, options_of, run
from .decode import parse_body
from .models import Model, normalize_name
from .prompt import CHATML_TEMPLATE, fit_messages, render
from .runner import Runner
from .scheduler import Scheduler
from .show import model_info, modelfile_text, parameters_text
from .store import Store
from .wire import APIError, JSONResponse, error, local_time

log = logging.getLogger("llm_experiment.engine")

try:
    from importlib.metadata import version as _version

    VERSION = _version("llm-experiment")
except Exception:  # noqa: BLE001 - running from a checkout that was not pip-installed
    VERSION = "0.1.0"

DEFAULT_MAX_BODY = 64 * 1024 * 1024


class Engine:
    """The state behind the routes: which models exist and who is running."""

    def __init__(self, store: Store, scheduler: Scheduler, max_body: int = DEFAULT_MAX_BODY):
        self.store = store
        self.scheduler = scheduler
        self.max_body = max_body

    async def body(self, request: Request, struct: str) -> dict[str, Any]:
        """The request's JSON, refused past ``max_body`` bytes."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise APIError(413, "http: request body too large")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > self.max_body:
                raise APIError(413, "http: request body too large")
        return parse_body(bytes(raw), struct)

    def find(self, name: str, *, empty_status: int, empty_message: str) -> Model:
        """The model called ``name``, or Ollama's error for an empty, malformed or unknown name."""
        if not name.strip():
            raise APIError(empty_status, empty_message)
        if normalize_name(name) is None:
            raise APIError(400, "invalid model name")
        model = self.store.get(name)
        if model is None:
            raise APIError(404, f'model "{name}" not found, try pulling it first')
        return model

    # routes ------------------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(self, request: Request) -> Response:
        models = sorted(self.store.all(), key=lambda m: m.modified_ns, reverse=True)
        return JSONResponse({"models": [
            {"name": m.name, "model": m.name, "modified_at": local_time(m.modified_ns), "size": m.size,
             "digest": m.manifest_digest(), "details": m.details}
            for m in models
        ]})

    async def ps(self, request: Request) -> Response:
        rows = []
        for name, runner, expires_ns in self.scheduler.loaded():
            m = self.store.get(name) or runner.model  # as listed now (a pull may have copied it into the store)
            rows.append({"name": name, "model": name, "size": m.size, "digest": m.manifest_digest(),
                         "details": m.details, "expires_at": local_time(expires_ns), "size_vram": 0,
                         "context_length": runner.num_ctx})
        return JSONResponse({"models": rows})

    async def show(self, request: Request) -> Response:
        body = await self.body(request, "ShowRequest")
        name = body.get("model") or body.get("name") or ""
        if not name.strip():
            raise APIError(400, "model is required")
        if normalize_name(name) is None:
            raise APIError(400, "invalid model name")
        model = self.store.get(name)
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
            "model_info": model_info(model),
            "capabilities": model.capabilities,
            "modified_at": local_time(model.modified_ns),
        }
        # Go leaves out empty strings (omitempty); model_info stays, the ollama client requires it.
        return JSONResponse({k: v for k, v in answer.items() if v != "" or k == "model_info"})

    async def generate(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        body = await self.body(request, "GenerateRequest")
        name = body.get("model") or ""
        model = self.find(name, empty_status=404, empty_message=f"model '{name}' not found")
        keep_alive = keep_alive_of(body)
        prompt = body.get("prompt") or ""
        raw = bool(body.get("raw"))
        if not prompt and keep_alive == 0:
            self.scheduler.unload(model)
            return done_without_generating("generate", name, "unload")
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise APIError(400, "raw mode does not support template, system, or context")
        check_capabilities(model, body, insert=bool(body.get("suffix")), vision=bool(body.get("images")))
        if body.get("template"):
            raise APIError(400, "the embedded engine does not support the template field yet; leave it out")
        system = body.get("system") or model.system
        context = body.get("context")
        messages = [{"role": "system", "content": system}] if system else []
        if not context:
            messages += model.messages  # a model's MESSAGE turns, unless we continue an earlier answer
        messages.append({"role": "user", "content": prompt})

        def build(runner: Runner) -> list[int]:
            if raw:
                return runner.tokenize(prompt)
            before = runner.detokenize(context) if context else ""  # Ollama prepends the old context as text
            return runner.tokenize(before + render(model.template, messages))

        job = Job(model=model, name=name, kind="generate", options=options_of(model, body), keep_alive=keep_alive,
                  stream=body.get("stream") is not False, grammar=grammar_of(body.get("format")) if prompt else None,
                  build_prompt=build, context_out=not raw, started_ns=started)
        return await run(job, self.scheduler, request, load_only=not prompt)

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        body = await self.body(request, "ChatRequest")
        name = body.get("model") or ""
        model = self.find(name, empty_status=400, empty_message="model is required")
        keep_alive = keep_alive_of(body)
        given = [m for m in body.get("messages") or [] if m is not None]
        if not given and keep_alive == 0:
            self.scheduler.unload(model)
            return done_without_generating("chat", name, "unload")
        check_capabilities(model, body, tools=bool(body.get("tools")), vision=any(m.get("images") for m in given))
        messages = model.messages + [_message(m) for m in given]  # a model's MESSAGE turns come first
        if messages and model.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": model.system})

        def build(runner: Runner) -> list[int]:
            count = lambda text: len(runner.tokenize(text))  # noqa: E731
            as_text = partial(render, model.template)
            return runner.tokenize(as_text(fit_messages(messages, runner.num_ctx, count, as_text)))

        job = Job(model=model, name=name, kind="chat", options=options_of(model, body), keep_alive=keep_alive,
                  stream=body.get("stream") is not False, grammar=grammar_of(body.get("format")) if given else None,
                  build_prompt=build, context_out=False, started_ns=started)
        return await run(job, self.scheduler, request, load_only=not given)


async def _not_yet(request: Request) -> Response:
    """Ollama routes this engine does not implement yet: say so plainly instead of a bare 404."""
    return error(501, f"the embedded engine does not support {request.method} {request.url.path} yet; "
                      "use a real Ollama server for it")


NOT_YET = [("/api/push", ["POST"]), ("/api/embed", ["POST"]), ("/api/embeddings", ["POST"]),
           ("/v1/{rest:path}", ["GET", "POST"])]


def _message(m: dict[str, Any]) -> dict[str, str]:
    """A chat message as the template needs it; roles are lower-cased, as Ollama does."""
    return {"role": (m.get("role") or "").lower(), "content": m.get("content") or ""}


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
    yield
    app.state.engine.scheduler.close()  # free the models on shutdown


def create_app(engine: Engine) -> Starlette:
    """The ASGI application: Ollama's routes over ``engine``."""
    routes = [
        Route("/", engine.root, methods=["GET", "HEAD"]),
        Route("/api/version", engine.version, methods=["GET", "HEAD"]),
        Route("/api/tags", engine.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", engine.ps, methods=["GET"]),
        Route("/api/show", engine.show, methods=["POST"]),
        Route("/api/generate", engine.generate, methods=["POST"]),
        Route("/api/chat", engine.chat, methods=["POST"]),
        Route("/api/pull", partial(manage.pull, engine), methods=["POST"]),
        Route("/api/create", partial(manage.create, engine), methods=["POST"]),
        Route("/api/copy", partial(manage.copy, engine), methods=["POST"]),
        Route("/api/delete", partial(manage.delete, engine), methods=["DELETE"]),
        Route("/api/blobs/{digest}", partial(manage.blob, engine), methods=["HEAD", "POST"]),
        *(Route(path, _not_yet, methods=methods) for path, methods in NOT_YET),
    ]
    app = Starlette(routes=routes, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, Exception: _server_error,
    }, lifespan=_lifespan)
    app.state.engine = engine
    return app
