"""Stop work nobody waits for: an ASGI request's answer, abandoned when its client hangs up.

Shared by the engine (a non-streamed generation or embedding), the chatbot service and the
classroom gateway: each awaits its work through :func:`unless_client_leaves`, so a client that
closes its connection cancels the work (and with it the runner's job or the upstream request).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


async def client_left(request: Request) -> None:
    """Return when the client hangs up (the request's body must already have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """``await work``, but cancel it and return None if the client hangs up first."""
    job, hangup = asyncio.ensure_future(work), asyncio.ensure_future(client_left(request))
    try:
        await asyncio.wait({job, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not job.done():
            job.cancel()  # the work's own clean-up stops the runner's job or closes the upstream connection
            with contextlib.suppress(asyncio.CancelledError):
                await job
    return None if job.cancelled() else job.result()
