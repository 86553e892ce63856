"""Reading NDJSON: one JSON object per line, as Ollama streams its answers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import requests

from .errors import OllamaError, error_from_exception


def iter_ndjson(source: requests.Response | Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Yield each JSON object of an NDJSON stream.

    ``source`` is a streaming ``requests`` response or any iterable of byte chunks. Chunks can
    end anywhere, even inside a line or a UTF-8 character: we only parse complete lines.
    Blank lines are skipped. A line ``{"error": "..."}`` (how Ollama reports a failure after
    the stream has started) raises :class:`OllamaError` with status -1.
    """
    url = getattr(source, "url", "")
    chunks = source.iter_content(chunk_size=None) if isinstance(source, requests.Response) else source
    buffer = b""
    try:
        for chunk in chunks:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield from _parse(line, url)
    except requests.RequestException as exc:
        raise error_from_exception(exc, url) from exc
    yield from _parse(buffer, url)  # a last line without its newline


def _parse(line: bytes, url: str) -> Iterator[dict[str, Any]]:
    line = line.strip()
    if not line:
        return
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise OllamaError(f"the server sent a line that is not JSON: {line[:80]!r}", status=-1, url=url) from exc
    if isinstance(obj, dict) and "error" in obj:
        raise OllamaError(str(obj["error"]), status=-1, url=url, advice="The server failed while answering.")
    yield obj
