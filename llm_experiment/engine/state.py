"""The engine's state behind the routes: the model store, the scheduler and request-wide limits."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from ..protocol import normalize_name
from .decode import parse_body
from .models import Model
from .scheduler import Scheduler
from .store import Store
from .wire import APIError

DEFAULT_MAX_BODY = 64 * 1024 * 1024
#: Bodies above this are decoded in a worker thread, so a huge JSON never stalls other clients.
_DECODE_IN_THREAD = 256 * 1024


class Engine:
    """Which models exist (the store) and who is running (the scheduler)."""

    def __init__(self, store: Store, scheduler: Scheduler, max_body: int = DEFAULT_MAX_BODY):
        self.store = store
        self.scheduler = scheduler
        self.max_body = max_body

    async def body(self, request: Request, struct: str) -> dict[str, Any]:
        """The request's JSON decoded as Ollama's Go struct ``struct``; refused past ``max_body`` bytes."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise APIError(413, "http: request body too large")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > self.max_body:
                raise APIError(413, "http: request body too large")
        if len(raw) > _DECODE_IN_THREAD:
            return await asyncio.to_thread(parse_body, bytes(raw), struct)
        return parse_body(bytes(raw), struct)

    async def find(self, name: str, *, empty_status: int, empty_message: str) -> Model:
        """The model called ``name``, or Ollama's error for an empty, malformed or unknown name."""
        if not name.strip():
            raise APIError(empty_status, empty_message)
        if normalize_name(name) is None:
            raise APIError(400, "invalid model name")
        model = await asyncio.to_thread(self.store.get, name)
        if model is None:
            raise APIError(404, f'model "{name}" not found, try pulling it first')
        return model
