"""Several Ollama servers behind the gateway: which are up, which models they have, which is least busy.

A class that outgrows one machine gets more Ollama servers ("upstreams"). The gateway asks
:meth:`Upstreams.pick` where to send each request and holds :meth:`Upstreams.use` while it runs::

    upstreams = Upstreams(["http://lab-a:11434", "http://lab-b:11434"], client)
    checker = asyncio.create_task(upstreams.run())   # GET /api/version and /api/tags every few seconds
    up = upstreams.pick("smollm2:135m")              # raises NoUpstream when none answers
    async with upstreams.use(up):
        response = await client.post(f"{up.url}/api/chat", json=body)

Until the first check, every upstream counts as healthy with an unknown list of models, so a gateway
that serves at once still works; an upstream that fails (here or in the gateway) is taken out until a
check finds it answering again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..hosts import parse_host
from ..protocol import display_name, name_key, normalize_name
from . import upstream_http as http

log = logging.getLogger("llm_experiment.classroom")

#: A health check must be quick: a server that takes longer than this to list its models is in trouble anyway.
CHECK_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
HOW_TO_FIX = ("Check that Ollama runs there (`ollama serve`, or `docker compose up`), that it listens on the "
              "network and not only on localhost (OLLAMA_HOST=0.0.0.0 on that machine), that no firewall is in "
              "the way, and the URLs given to the gateway.")


class NoUpstream(Exception):
    """No upstream Ollama server is healthy; the gateway answers 503 with this message."""


@dataclass(eq=False)  # one object per server, compared by identity
class Upstream:
    """One Ollama server: where it is, how many requests it runs at once, and what the last check found."""

    url: str
    parallel: int = 1  # what the server runs at once: its OLLAMA_NUM_PARALLEL
    healthy: bool = True  # until a check or a failure says otherwise
    active: int = 0  # requests in flight, counted by Upstreams.use
    models: list[str] | None = None  # from /api/tags; None until the first check
    version: str | None = None  # from /api/version
    last_error: str | None = None
    checked_at: float | None = None  # time.monotonic() of the last check
    _keys: frozenset[str] = field(default=frozenset(), init=False, repr=False)  # the models' names, compared

    def __post_init__(self) -> None:
        self.url = parse_host(self.url)  # "lab-a" -> "http://lab-a:11434", as OLLAMA_HOST is read
        if self.parallel < 1:
            raise ValueError(f"{self.url}: parallel must be at least 1, not {self.parallel}")

    def has_model(self, model: str) -> bool:
        """Whether the last check listed ``model`` (as Ollama matches names: ``smollm2`` is ``smollm2:latest``)."""
        full = normalize_name(model)
        return full is not None and name_key(full) in self._keys

    def set_models(self, names: Iterable[str]) -> None:
        """Remember the model names from ``/api/tags``."""
        fulls = [full for full in (normalize_name(name) for name in names) if full is not None]
        self.models = sorted(display_name(full) for full in fulls)
        self._keys = frozenset(name_key(full) for full in fulls)

    @property
    def load(self) -> float:
        """How busy it is: requests in flight per request it can run at once."""
        return self.active / self.parallel

    def status(self, now: float | None = None) -> dict[str, Any]:
        """This upstream as the status page shows it."""
        now = time.monotonic() if now is None else now
        return {"url": self.url, "healthy": self.healthy, "active": self.active, "parallel": self.parallel,
                "models": self.models, "version": self.version, "last_error": self.last_error,
                "checked_s_ago": None if self.checked_at is None else round(now - self.checked_at, 1)}


class Upstreams:
    """The gateway's Ollama servers, checked every ``check_every`` seconds by :meth:`run`."""

    def __init__(self, urls: Iterable[str | Upstream], client: httpx.AsyncClient, check_every: float = 5.0,
                 on_change: Callable[[], None] | None = None):
        self.upstreams = [url if isinstance(url, Upstream) else Upstream(url) for url in urls]
        if not self.upstreams:
            raise ValueError("the gateway needs at least one upstream Ollama server URL")
        self.client = client
        self.check_every = check_every
        self.on_change = on_change  # called when an upstream is taken out or comes back

    @property
    def capacity(self) -> int:
        """How many requests all upstreams run at once: a good ``capacity`` for the :class:`FairQueue`."""
        return sum(up.parallel for up in self.upstreams)

    @property
    def healthy_capacity(self) -> int:
        """How many requests the healthy upstreams run at once (the fair queue shrinks to it when one is down)."""
        return sum(up.parallel for up in self.upstreams if up.healthy)

    def healthy(self) -> list[Upstream]:
        """The upstreams that answered their last check, in the order given."""
        return [up for up in self.upstreams if up.healthy]

    def pick(self, model: str) -> Upstream:
        """The least busy healthy upstream that has ``model``; else the least busy healthy one.

        An upstream without the model answers 404 itself, with Ollama's own message. Raises
        :class:`NoUpstream` when no upstream is healthy.
        """
        healthy = [up for up in self.upstreams if up.healthy]
        if not healthy:
            problems = "; ".join(f"{up.url}: {up.last_error or 'unhealthy'}" for up in self.upstreams)
            raise NoUpstream(f"No Ollama server is available for the class ({problems}). {HOW_TO_FIX}")
        with_model = [up for up in healthy if up.has_model(model)]
        # min() keeps the first of equals: ties go to the upstream listed first.
        return min(with_model or healthy, key=lambda up: (up.load, up.active))

    @asynccontextmanager
    async def use(self, up: Upstream) -> AsyncIterator[Upstream]:
        """Count a request in flight on ``up`` for as long as the block runs.

        A connection that cannot even be opened (refused, timed out) marks ``up`` failed on the way out.
        """
        up.active += 1
        try:
            yield up
        except (httpx.ConnectError, httpx.ConnectTimeout, http.ConnectError) as exc:
            self.mark_failed(up, exc)
            raise
        finally:
            up.active -= 1

    def mark_failed(self, up: Upstream, error: BaseException | str) -> None:
        """Take ``up`` out of :meth:`pick` until a check finds it answering again."""
        was_healthy, up.healthy, up.last_error = up.healthy, False, _describe(error)
        if was_healthy:
            log.warning("upstream %s failed, taken out until it answers again: %s", up.url, error)
            self._changed()

    async def refresh(self) -> None:
        """Check every upstream at once: ``GET /api/version`` and ``GET /api/tags``, with short timeouts."""
        await asyncio.gather(*(self._check(up) for up in self.upstreams))

    async def _check(self, up: Upstream) -> None:
        try:
            version = await self.client.get(f"{up.url}/api/version", timeout=CHECK_TIMEOUT)
            tags = await self.client.get(f"{up.url}/api/tags", timeout=CHECK_TIMEOUT)
            problem = _not_ollama(version, tags)
        except httpx.HTTPError as exc:
            problem = _describe(exc)
        up.checked_at = time.monotonic()
        if problem is not None:
            self.mark_failed(up, problem)
            return
        up.version = version.json()["version"]
        up.set_models(m.get("model") or m.get("name") for m in tags.json()["models"] or [])
        was_healthy, up.healthy, up.last_error = up.healthy, True, None
        if not was_healthy:
            log.info("upstream %s answers again", up.url)
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def run(self) -> None:
        """Check the upstreams now and every ``check_every`` seconds, until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop the checks: failed upstreams would never come back
                log.exception("checking the upstreams failed")
            await asyncio.sleep(self.check_every)

    def status(self) -> list[dict[str, Any]]:
        """Every upstream as the status page shows it, in the order they were given."""
        now = time.monotonic()
        return [up.status(now) for up in self.upstreams]


def _not_ollama(version: httpx.Response, tags: httpx.Response) -> str | None:
    """What is wrong with the answers to ``/api/version`` and ``/api/tags``; ``None`` if they are Ollama's."""
    for response in (version, tags):
        if response.status_code != 200:
            return f"{response.request.url.path} answered {response.status_code}, not 200"
    try:
        if not isinstance(version.json()["version"], str):
            return "/api/version answers, but not like Ollama does (no version)"
    except (ValueError, KeyError, TypeError):
        return "/api/version answers, but not like Ollama does (not its JSON)"
    try:
        if not all(isinstance(m.get("model") or m.get("name"), str) for m in tags.json()["models"] or []):
            return "/api/tags answers, but not like Ollama does (a model without a name)"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "/api/tags answers, but not like Ollama does (not its JSON)"
    return None


def _describe(error: BaseException | str) -> str:
    """A short text for the status page: what failed, readable by an instructor."""
    if isinstance(error, str):
        return error
    if isinstance(error, (httpx.TimeoutException, *http.TIMEOUTS)):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError | http.ConnectError):
        return f"cannot connect ({error or 'connection refused'})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
