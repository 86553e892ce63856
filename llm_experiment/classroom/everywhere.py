"""An instructor's model management on every upstream: pull, create, copy and delete once, on each server.

With several upstreams, a model pulled on one server only would serve the class from that one alone, and a
model deleted from one only would come back from another. So the gateway sends an instructor's
``/api/pull``, ``/api/create``, ``/api/copy`` and ``/api/delete`` to every healthy upstream, one after the
other, and answers for all of them:

- streamed (a pull or create without ``"stream": false``): each upstream's progress lines in turn, as they
  come; if one fails, an ``{"error": "<server>: ..."}`` line ends the stream (the servers before it have
  the change, the ones after it were not asked);
- not streamed: the first server's answer when every server succeeded; else the first failure, its message
  naming the server and the servers where it worked. A copy or delete that finds the model on some
  servers only (404 on the others) succeeds: students' models live on one server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .relay import Head, Outbound, describe
from .upstreams import Upstream

log = logging.getLogger("llm_experiment.classroom")

#: The routes an instructor's request runs on every upstream.
EVERYWHERE = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete"})
#: Where a 404 from some upstreams is fine, as long as one has the model.
MISSING_IS_FINE = frozenset({"/api/copy", "/api/delete"})


def streamed(path: str, fields: dict[str, Any]) -> bool:
    """Whether Ollama streams this request's answer (pull and create do unless ``"stream": false``)."""
    return path in ("/api/pull", "/api/create") and fields.get("stream", True) is not False


async def streamed_one_by_one(client: httpx.AsyncClient, ups: list[Upstream],
                              request: Outbound) -> AsyncIterator[Head | bytes]:
    """A streamed request on each upstream in turn: the first one's :class:`Head`, then every server's lines."""
    assert isinstance(request.content, bytes | None)
    for n, up in enumerate(ups):
        try:
            async with client.stream(request.method, up.url + request.path, content=request.content,
                                     headers=request.headers) as response:
                if n == 0:
                    yield Head(response.status_code, response.headers.get("content-type"))
                    if response.status_code != 200:  # the first server refused: its answer says why
                        async for chunk in response.aiter_raw():
                            yield chunk
                        return
                elif response.status_code != 200:
                    yield _error_line(up, _message(await response.aread()))
                    return
                async for chunk in response.aiter_raw():
                    if b'"error"' in chunk:  # Ollama ends a failed stream with an error line: stop there
                        yield chunk
                        return
                    yield chunk
        except httpx.HTTPError as exc:
            if n == 0:
                yield Head(502, "application/json")
                yield json.dumps({"error": f"{up.url}: {describe(exc)}"}).encode()
            else:
                yield _error_line(up, describe(exc))
            return
        log.info("%s done on %s", request.path, up.url)


async def one_answer_for_all(client: httpx.AsyncClient, ups: list[Upstream], request: Outbound) -> tuple[int, bytes]:
    """A request with one JSON answer, on each upstream in turn; the status and body that answer for all."""
    done: list[tuple[Upstream, httpx.Response]] = []
    missing: httpx.Response | None = None  # the first "not found", if any
    for up in ups:
        try:
            response = await client.request(request.method, up.url + request.path, content=request.content,
                                            headers=request.headers)
        except httpx.HTTPError as exc:
            return 502, _failure(up, describe(exc), done)
        if response.status_code == 404 and request.path in MISSING_IS_FINE:
            missing = missing or response
        elif response.status_code != 200:
            return response.status_code, _failure(up, _message(response.content), done)
        else:
            done.append((up, response))
    if not done and missing is not None:  # no server has the model: the first 404 says so in Ollama's words
        return missing.status_code, missing.content
    return 200, done[0][1].content


def _failure(up: Upstream, message: str, done: list[tuple[Upstream, httpx.Response]]) -> bytes:
    where = f" (done on {', '.join(u.url for u, _ in done)}; not tried on the servers after it)" if done else ""
    return json.dumps({"error": f"{up.url}: {message}{where}"}).encode()


def _error_line(up: Upstream, message: str) -> bytes:
    return json.dumps({"error": f"{up.url}: {message}"}).encode() + b"\n"


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:500] or "no message"
