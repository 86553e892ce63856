"""``generate()`` and ``chat()``: the two calls of the course, over plain ``requests``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import requests

from .errors import error_from_exception, error_from_response
from .hosts import default_model, server_url
from .ndjson import iter_ndjson

#: Seconds to wait for a connection, and then for each piece of the answer. A real Ollama
#: may take a minute to load a large model from disk before the first byte.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 300.0


@dataclass
class Reply:
    """A finished answer: its ``text`` and the server's final object (``stats``: counts, durations)."""

    text: str
    stats: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


class Stream:
    """The pieces of an answer as they arrive; iterate over it. Afterwards ``reply`` holds the whole."""

    def __init__(self, objects: Iterator[dict[str, Any]], key: str):
        self._objects = objects
        self._key = key
        self._pieces: list[str] = []
        self.reply: Reply | None = None

    def __iter__(self) -> Iterator[str]:
        for obj in self._objects:
            piece = _text_of(obj, self._key)
            if piece:
                self._pieces.append(piece)
                yield piece
            if obj.get("done"):
                self.reply = Reply("".join(self._pieces), obj)

    def close(self) -> None:
        """Stop reading: the server sees the connection close and stops generating."""
        self._objects.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # leaving a `with` block early (break, an exception) hangs up at once


def _text_of(obj: dict[str, Any], key: str) -> str:
    if key == "message":
        return (obj.get("message") or {}).get("content", "")
    return obj.get(key, "")


def post(path: str, body: dict[str, Any], *, server: str | None = None, stream: bool = False,
         timeout: tuple[float, float] | None = None) -> requests.Response:
    """POST ``body`` to ``server + path``; raise :class:`OllamaError` on any failure."""
    return _send("POST", path, body, server, stream, timeout)


def get(path: str, *, server: str | None = None, timeout: tuple[float, float] | None = None) -> requests.Response:
    """GET ``server + path``; raise :class:`OllamaError` on any failure."""
    return _send("GET", path, None, server, False, timeout)


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer $OLLAMA_API_KEY`` when that variable is set, as the ``ollama`` client sends it.

    Ollama itself needs no key; a classroom gateway (notebook 09) does. Read at each request, so a key
    set with ``os.environ`` in a running notebook counts at once.
    """
    key = os.environ.get("OLLAMA_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _send(method: str, path: str, body: dict[str, Any] | None, server: str | None, stream: bool,
          timeout: tuple[float, float] | None) -> requests.Response:
    url = server_url(server) + path
    try:
        response = requests.request(method, url, json=body, stream=stream, headers=auth_headers(),
                                    timeout=timeout or (CONNECT_TIMEOUT, READ_TIMEOUT))
    except requests.RequestException as exc:
        raise error_from_exception(exc, url) from exc
    if not response.ok:
        raise error_from_response(response, (body or {}).get("model"))
    return response


def _objects(response: requests.Response) -> Iterator[dict[str, Any]]:
    with response:  # closes the connection even if the reader stops early
        yield from iter_ndjson(response)


def _request(path: str, key: str, body: dict[str, Any], server: str | None, stream: bool) -> Reply | Stream:
    body = {k: v for k, v in body.items() if v is not None}
    response = post(path, {**body, "stream": stream}, server=server, stream=stream)
    if stream:
        return Stream(_objects(response), key)
    final = response.json()
    return Reply(_text_of(final, key), final)


# The overloads tell a type checker (and your editor) what comes back: a Reply by default, a
# Stream with stream=True. So `generate(...).text` and `for piece in generate(..., stream=True)`
# need no isinstance() check. The last overload covers a stream flag only known at run time.
@overload
def generate(prompt: str, *, model: str | None = None, system: str | None = None,
             options: dict[str, Any] | None = None, stream: Literal[False] = False, server: str | None = None,
             format: str | dict[str, Any] | None = None, raw: bool | None = None,
             context: list[int] | None = None, keep_alive: str | int | None = None) -> Reply: ...
@overload
def generate(prompt: str, *, model: str | None = None, system: str | None = None,
             options: dict[str, Any] | None = None, stream: Literal[True], server: str | None = None,
             format: str | dict[str, Any] | None = None, raw: bool | None = None,
             context: list[int] | None = None, keep_alive: str | int | None = None) -> Stream: ...
@overload
def generate(prompt: str, *, model: str | None = None, system: str | None = None,
             options: dict[str, Any] | None = None, stream: bool, server: str | None = None,
             format: str | dict[str, Any] | None = None, raw: bool | None = None,
             context: list[int] | None = None, keep_alive: str | int | None = None) -> Reply | Stream: ...
def generate(prompt: str, *, model: str | None = None, system: str | None = None,
             options: dict[str, Any] | None = None, stream: bool = False, server: str | None = None,
             format: str | dict[str, Any] | None = None, raw: bool | None = None,
             context: list[int] | None = None, keep_alive: str | int | None = None) -> Reply | Stream:
    """Complete ``prompt`` with ``/api/generate``.

    Returns a :class:`Reply` (``.text``, ``.stats``), or with ``stream=True`` a :class:`Stream`
    that yields the text piece by piece. ``model`` defaults to ``$LLM_MODEL`` or smollm2:135m.
    """
    body = {"model": model or default_model(), "prompt": prompt, "system": system, "options": options,
            "format": format, "raw": raw, "context": context, "keep_alive": keep_alive}
    return _request("/api/generate", "response", body, server, stream)


@overload
def chat(messages: list[dict[str, Any]], *, model: str | None = None, options: dict[str, Any] | None = None,
         stream: Literal[False] = False, server: str | None = None, format: str | dict[str, Any] | None = None,
         keep_alive: str | int | None = None) -> Reply: ...
@overload
def chat(messages: list[dict[str, Any]], *, model: str | None = None, options: dict[str, Any] | None = None,
         stream: Literal[True], server: str | None = None, format: str | dict[str, Any] | None = None,
         keep_alive: str | int | None = None) -> Stream: ...
@overload
def chat(messages: list[dict[str, Any]], *, model: str | None = None, options: dict[str, Any] | None = None,
         stream: bool, server: str | None = None, format: str | dict[str, Any] | None = None,
         keep_alive: str | int | None = None) -> Reply | Stream: ...
def chat(messages: list[dict[str, Any]], *, model: str | None = None, options: dict[str, Any] | None = None,
         stream: bool = False, server: str | None = None, format: str | dict[str, Any] | None = None,
         keep_alive: str | int | None = None) -> Reply | Stream:
    """Answer the conversation ``messages`` (``[{"role": ..., "content": ...}, ...]``) with ``/api/chat``.

    Returns a :class:`Reply` or, with ``stream=True``, a :class:`Stream` of text pieces.
    """
    body = {"model": model or default_model(), "messages": messages, "options": options,
            "format": format, "keep_alive": keep_alive}
    return _request("/api/chat", "message", body, server, stream)
