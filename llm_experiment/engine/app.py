"""The HTTP routes of the embedded engine, answering as Ollama does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .completion import Job, check_capabilities, done_without_generating, grammar_of, keep_alive_of, options_of, run
from .decode import parse_body
from .models import Model, Registry, normalize_name
from .prompt import CHATML_TEMPLATE, fit_messages, render_chatml
from .runner import Runner
from .scheduler import Scheduler
from .show import model_info, modelfile_text, parameters_text
from .wire import APIError, JSONResponse, error, local_time, ndjson_line

log = logging.getLogger("llm_experiment.engine")

try:
    from importlib.metadata import version as _version

    VERSION = _version("llm-experiment")
except Exception:  # noqa: BLE001 - running from a checkout that was not pip-installed
    VERSION = "0.1.0"

DEFAULT_MAX_BODY = 64 * 1024 * 1024


class Engine:
    """The state behind the routes: which models exist and who is running."""

    def __init__(self, registry: Registry, scheduler: Scheduler, max_body: int = DEFAULT_MAX_BODY):
        self.registry = registry
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
        model = self.registry.get(name)
        if model is None:
            raise APIError(404, f'model "{name}" not found, try pulling it first')
        return model

    # routes ------------------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(self, request: Request) -> Response:
        models = sorted(self.registry.all(), key=lambda m: m.modified_ns, reverse=True)
        return JSONResponse({"models": [
            {"name": m.name, "model": m.name, "modified_at": local_time(m.modified_ns), "size": m.size,
             "digest": m.digest, "details": m.details}
            for m in models
        ]})

    async def ps(self, request: Request) -> Response:
        rows = []
        for name, runner, expires_ns in self.scheduler.loaded():
            m = runner.model
            rows.append({"name": name, "model": name, "size": m.size, "digest": m.digest, "details": m.details,
                         "expires_at": local_time(expires_ns), "size_vram": 0, "context_length": runner.num_ctx})
        return JSONResponse({"models": rows})

    async def show(self, request: Request) -> Response:
        body = await self.body(request, "ShowRequest")
        name = body.get("model") or body.get("name") or ""
        if not name.strip():
            raise APIError(400, "model is required")
        model = self.registry.get(name) if normalize_name(name) else None
        if model is None:
            raise APIError(404 if normalize_name(name) else 400,
                           f"model '{name}' not found" if normalize_name(name) else "invalid model name")
        answer: dict[str, Any] = {
            "license": model.license,
            "modelfile": modelfile_text(model, CHATML_TEMPLATE),
            "parameters": parameters_text(model.parameters),
            "template": CHATML_TEMPLATE,
            "system": model.system,
            "details": model.details,
            "model_info": model_info(model),
            "capabilities": model.capabilities,
            "modified_at": local_time(model.modified_ns),
        }
        # Go leaves out empty strings (omitempty); model_info stays, the ollama client requires it.
        return JSONResponse({k: v for k, v in answer.items() if v != "" or k == "model_info"})

    async def pull(self, request: Request) -> Response:
        """Pull a model. Only the bundled one can be had: it is already on disk, so this checks its digest."""
        body = await self.body(request, "PullRequest")
        name = body.get("model") or body.get("name") or ""
        if normalize_name(name) is None:
            raise APIError(400, "invalid model name")
        model = self.registry.get(name)
        stream = body.get("stream") is not False
        if model is None:
            message = "pull model manifest: file does not exist"
            if not stream:
                raise APIError(500, message)
            return StreamingResponse(iter([ndjson_line({"status": "pulling manifest"}),
                                           ndjson_line({"error": message})]), media_type="application/x-ndjson")
        if not stream:
            await asyncio.to_thread(lambda: model.digest)
            return JSONResponse({"status": "success"})
        return StreamingResponse(_pull_statuses(model), media_type="application/x-ndjson")

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

        def build(runner: Runner) -> list[int]:
            if raw:
                return runner.tokenize(prompt)
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": prompt})
            before = runner.detokenize(context) if context else ""  # Ollama prepends the old context as text
            return runner.tokenize(before + render_chatml(messages))

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
        messages = [_message(m) for m in given]
        if messages and model.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": model.system})

        def build(runner: Runner) -> list[int]:
            count = lambda text: len(runner.tokenize(text))  # noqa: E731
            return runner.tokenize(render_chatml(fit_messages(messages, runner.num_ctx, count)))

        job = Job(model=model, name=name, kind="chat", options=options_of(model, body), keep_alive=keep_alive,
                  stream=body.get("stream") is not False, grammar=grammar_of(body.get("format")) if given else None,
                  build_prompt=build, context_out=False, started_ns=started)
        return await run(job, self.scheduler, request, load_only=not given)


async def _pull_statuses(model: Model) -> AsyncIterator[bytes]:
    """Ollama's pull progress, for real: the installed weights are read and hashed as we report,
    then checked against the digest the model is listed under."""
    yield ndjson_line({"status": "pulling manifest"})
    digest = f"sha256:{await asyncio.to_thread(lambda: model.digest)}"
    total, done, sha = model.size, 0, hashlib.sha256()
    with open(model.path, "rb") as f:
        while block := await asyncio.to_thread(f.read, 8 << 20):
            sha.update(block)
            done += len(block)
            yield ndjson_line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": total,
                               "completed": done})
    yield ndjson_line({"status": "verifying sha256 digest"})
    if f"sha256:{sha.hexdigest()}" != digest:
        yield ndjson_line({"error": f"digest mismatch, file must be downloaded again: {model.path}"})
        return
    for status in ("writing manifest", "success"):
        yield ndjson_line({"status": status})


async def _not_yet(request: Request) -> Response:
    """Ollama routes this engine does not implement yet: say so plainly instead of a bare 404."""
    return error(501, f"the embedded engine does not support {request.method} {request.url.path} yet; "
                      "use a real Ollama server for it")


NOT_YET = [("/api/push", ["POST"]), ("/api/create", ["POST"]), ("/api/copy", ["POST"]),
           ("/api/delete", ["DELETE"]), ("/api/embed", ["POST"]), ("/api/embeddings", ["POST"]),
           ("/api/blobs/{digest}", ["HEAD", "POST"]), ("/v1/{rest:path}", ["GET", "POST"])]


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
        Route("/api/pull", engine.pull, methods=["POST"]),
        *(Route(path, _not_yet, methods=methods) for path, methods in NOT_YET),
    ]
    app = Starlette(routes=routes, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, Exception: _server_error,
    }, lifespan=_lifespan)
    app.state.engine = engine
    return app
