"""Model lists across several upstreams: ``/api/tags``, ``/api/ps`` and ``/v1/models`` as one server would answer.

With one upstream the gateway passes these through unchanged. With several, a student asking "which models
are there?" must not get the answer of whichever server happened to be least busy: the gateway asks every
healthy upstream at once and merges their lists, each model once (the first upstream, in the order given,
that lists it wins). An upstream that does not answer in time is left out; only when none answers is it a 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from .relay import describe
from .upstreams import CHECK_TIMEOUT, Upstream, Upstreams

log = logging.getLogger("llm_experiment.classroom")

#: The listing routes, and the field of the answer that holds the list.
LISTS = {"/api/tags": "models", "/api/ps": "models", "/v1/models": "data"}


class NoListing(Exception):
    """No healthy upstream answered the listing: the gateway answers 503 with this message."""


async def merged_listing(client: httpx.AsyncClient, upstreams: Upstreams, path: str) -> dict[str, Any]:
    """``GET path`` on every healthy upstream at once; one answer with each model listed once."""
    field = LISTS[path]
    healthy = upstreams.healthy()
    answers = await asyncio.gather(*(_listing(client, up, path, field) for up in healthy))
    found = [answer for answer in answers if answer is not None]
    if not found:
        raise NoListing(f"no Ollama server of the class answered {path}: try again in a few seconds")
    merged, seen = dict(found[0]), set()
    merged[field] = []
    for answer in found:
        for entry in answer[field]:
            key = _name(entry)
            if key not in seen:
                seen.add(key)
                merged[field].append(entry)
    return merged


async def _listing(client: httpx.AsyncClient, up: Upstream, path: str, field: str) -> dict[str, Any] | None:
    """One upstream's answer, if it is a JSON object with a list in ``field``; else ``None`` (and a log line)."""
    try:
        response = await client.get(up.url + path, timeout=CHECK_TIMEOUT)
        answer = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("upstream %s: %s failed (%s): left out of the list", up.url, path, describe(exc))
        return None
    if not (isinstance(answer, dict) and isinstance(answer.get(field) or [], list)
            and all(isinstance(entry, dict) for entry in answer.get(field) or [])):
        log.warning("upstream %s: %s answered %s, not a list of models: left out", up.url, path, response.status_code)
        return None
    return {**answer, field: answer.get(field) or []}


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("model") or entry.get("name") or entry.get("id") or entry)
