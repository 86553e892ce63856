"""Reading a request's body with a bound on its size, for the services that parse it whole.

A client may declare any ``Content-Length``, or none and stream forever; :func:`read_bounded` stops at
``limit`` bytes either way, so one request cannot fill the server's memory. Used by the chatbot service and
the task queue's manager (the classroom gateway streams big bodies through instead: its own ``read_body``).
"""

from __future__ import annotations

from starlette.requests import Request


class TooLarge(Exception):
    """The body is (or says it is) larger than the limit: answer 413."""


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; :class:`TooLarge` beyond, ``ClientDisconnect`` if the client left.

    A declared ``Content-Length`` over the limit is refused before reading (uvicorn drops the rest of the
    body, so the client still gets the answer).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > limit:
            raise TooLarge
    return bytes(raw)
