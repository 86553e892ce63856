"""Reading NDJSON: one JSON object per line, as Ollama streams its answers and its pull progress."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def show_progress(statuses: Iterable[Mapping[str, Any]], write: Callable[[str], None]) -> None:
    """Write the status objects of ``/api/pull`` as text through ``write``.

    A status with ``total`` bytes becomes a progress bar, redrawn in place (``\\r``) as
    ``completed`` grows; any other status (``pulling manifest``, ``success``) gets a line of its own.
    """
    on_bar = False  # whether the last thing written is a bar that still needs its newline
    try:
        for status in statuses:
            if status.get("total"):
                share = (status.get("completed") or 0) / status["total"]
                bar = "#" * int(share * 30)
                write(f"\r  {status.get('status') or ''} [{bar:<30}] {share:4.0%} of {status['total'] / 1e6:.0f} MB")
                on_bar = True
            elif status.get("status"):
                write(("\n" if on_bar else "") + f"  {status['status']}\n")
                on_bar = False
    finally:
        if on_bar:  # also when the stream fails mid-bar: the error then starts on a line of its own
            write("\n")
