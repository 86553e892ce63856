"""Connection hardening for the engine's uvicorn server: timeouts, a connection cap, a higher open-file limit.

Why: uvicorn times out only a connection that stays silent after a response (``timeout_keep_alive``); any byte
cancels that timer and nothing re-arms it. So a client that connects and says nothing, sends its headers a byte at a
time ("slowloris"), or stops halfway through a request body keeps its socket forever. Every socket is a file
descriptor; about a thousand such clients exhaust RLIMIT_NOFILE (often 1024) and from then on nobody can connect.

What this module adds, through subclasses of uvicorn's two HTTP/1.1 protocols:

- a header deadline: a request's line and headers must be complete within ``header_timeout`` of connecting or of
  the previous response, however many bytes trickle in;
- the idle timeout (uvicorn's ``timeout_keep_alive``) also for a fresh connection that sends nothing;
- a stalled-body timeout: a request body that gets no bytes for ``body_timeout`` is aborted, the app sees
  ``http.disconnect``;
- a connection cap below the descriptor limit: at the cap, a new connection evicts the connection that has waited
  longest for request headers (idle or slow ones), or, if all are busy, is answered 503 and closed;
- a header size limit for httptools, which has none (h11 has ``h11_max_incomplete_event_size``);
- ``raise_fd_limit()``, which lifts the soft open-file limit to the hard one.

Responses are never timed: an answer may stream for minutes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard], which we require
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

MAX_CONNECTIONS_CEILING = 4096
"""The default connection cap never exceeds this: far beyond what a course engine serves, small in memory."""

_REFUSAL = b"Too many connections, try again shortly.\n"
_REFUSAL_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
                     % (len(_REFUSAL), _REFUSAL))
_TOO_LARGE = b"Request headers too large.\n"
_TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                       b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE))


@dataclass(frozen=True)
class Limits:
    """What the hardened protocols enforce on each connection (times in seconds)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = MAX_CONNECTIONS_CEILING
    max_header_bytes: int = 64 * 1024


class HardenedConfig(uvicorn.Config):
    """A uvicorn.Config carrying Limits and the server-wide list of connections waiting for a request."""

    def __init__(self, app: Any, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits
        # Connections waiting for request headers, oldest first (dicts keep insertion order): eviction candidates.
        self.waiting: dict[_Hardening, None] = {}
        self.last_shed_warning = float("-inf")


class _Hardening(asyncio.Protocol):
    """Timers and the connection cap, mixed in before uvicorn's HttpToolsProtocol or H11Protocol."""

    # Provided by uvicorn's protocol classes.
    config: uvicorn.Config
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any
    flow: Any
    client: tuple[str, int] | None
    timeout_keep_alive: float
    timeout_keep_alive_task: asyncio.TimerHandle | None
    timeout_keep_alive_handler: Callable[[], None]

    def __init__(self, config: uvicorn.Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not isinstance(config, HardenedConfig):
            raise TypeError(f"{type(self).__name__} needs a HardenedConfig: build it with hardened_config()")
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        self.limits = config.limits
        self.waiting = config.waiting
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0
        self._seen_cycle: Any = None

    # --- uvicorn's protocol interface, extended

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_oldest_waiting():
            self._shed_warning("connection limit (%d) reached and every connection busy: refusing new connections")
            self._drop(_REFUSAL_RESPONSE)
            return
        self._await_request()
        # uvicorn arms its idle (keep-alive) timer only after a response; a silent new connection is idle too.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting_for_headers = self._header_timer is not None
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.cycle is not self._seen_cycle:  # the parser completed a new request's headers
            self._seen_cycle = self.cycle
            self._cancel_header_timer()
        elif waiting_for_headers and not (self.cycle is not None and self.cycle.more_body):
            # (after an early response the rest of that request's body still arrives: not header bytes)
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._drop(_TOO_LARGE_RESPONSE)
                return
        if self._body_pending():
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._seen_cycle = self.cycle  # may have started a pipelined request
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_request()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._stop_timers()  # the connection now belongs to a WebSocket protocol, with its own pings
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    # --- the header deadline and the connection cap

    def _await_request(self) -> None:
        """Start the header deadline and join the eviction queue (at its young end)."""
        self._cancel_header_timer()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)
        self.waiting[self] = None

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.waiting.pop(self, None)

    def _header_timeout(self) -> None:
        self._header_timer = None
        log.debug("%s: no complete request headers within %.1f s, closing", self._peer(), self.limits.header_timeout)
        self._drop()

    def _evict_oldest_waiting(self) -> bool:
        """Close the connection that has waited longest for request headers; False if there is none."""
        victim = next(iter(self.waiting), None)
        if victim is None:
            return False
        self._shed_warning("connection limit (%d) reached: closing the connections idle the longest")
        victim._drop()
        return True

    def _drop(self, response: bytes = b"") -> None:
        """Close now (after a last response, if given) and stop counting this connection."""
        self._stop_timers()
        if not self.transport.is_closing():
            if response:
                self.transport.write(response)
            self.transport.close()
        # connection_lost will discard it too, but only on a later loop turn: count it out now.
        self.connections.discard(self)

    def _shed_warning(self, message: str) -> None:
        config = self.config
        assert isinstance(config, HardenedConfig)
        now = self.loop.time()
        if now - config.last_shed_warning >= 60:
            config.last_shed_warning = now
            log.warning(message, self.limits.max_connections)

    # --- the stalled-body timeout

    def _body_pending(self) -> bool:
        cycle = self.cycle
        return (cycle is not None and cycle.more_body and not cycle.response_complete and not cycle.disconnected
                and not self.transport.is_closing())

    def _check_body(self) -> None:
        self._body_timer = None
        if not self._body_pending():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            self._body_seen = now  # we stopped reading (backpressure), or the client waits for our 100 Continue
        remaining = self._body_seen + self.limits.body_timeout - now
        if remaining > 0:
            self._body_timer = self.loop.call_later(remaining, self._check_body)
            return
        log.debug("%s: request body stalled for %.1f s, aborting the request", self._peer(), self.limits.body_timeout)
        self._drop()  # connection_lost then marks the cycle disconnected: the app's receive() gets http.disconnect

    def _stop_timers(self) -> None:
        self._cancel_header_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"


class HeadWithBody:
    """A connection's transport as one response sees it: its first write (the head) waits for the next one,
    or for the end of the current event-loop step, whichever comes first. Everything else goes straight through.

    uvicorn writes a response's head the moment the app sends ``http.response.start`` and its first piece
    of body in a second write: for a streamed answer, two wake-ups of the client instead of one, and on a
    busy machine the first can put the client on our CPU ahead of us (measured in front of the classroom
    gateway: about 0.6 ms before the first piece could follow; bench/README.md). Held until the end of
    the step, the head goes out with a piece that follows at once, and alone a few microseconds later
    otherwise, so nothing waits for a slow answer.
    """

    __slots__ = ("_transport", "_loop", "_held", "_started")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._started:
            self._started = True
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send what is held, if anything (and if the connection is still open)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:

    class HardenedHttpToolsProtocol(_Hardening, HttpToolsProtocol):
        """uvicorn's httptools protocol with header, idle and body timeouts and the connection cap; each
        response writes through a :class:`HeadWithBody`."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and not isinstance(cycle.transport, HeadWithBody):
                cycle.transport = HeadWithBody(cycle.transport, self.loop)

else:  # pragma: no cover
    HardenedHttpToolsProtocol = None  # type: ignore[assignment,misc]


class HardenedH11Protocol(_Hardening, H11Protocol):
    """uvicorn's h11 protocol with header, idle and body timeouts and the connection cap."""


def open_file_limit() -> int | None:
    """The soft limit on open file descriptors, or None where there is none to read (Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or as near as the OS allows); return the soft limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no such limit
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    # macOS reports an infinite hard limit but refuses more than kern.maxfilesperproc: try finite fallbacks.
    candidates = [hard] if hard != infinite else []
    candidates += [n for n in (1 << 20, 65536, 10240) if hard == infinite or n < hard]
    for target in candidates:
        if soft != infinite and target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        log.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d", soft, target)
        return target
    log.debug("open-file limit (RLIMIT_NOFILE) stays at %s (hard limit %s)", soft, hard)
    return None if soft == infinite else soft


def default_max_connections() -> int:
    """Three quarters of the open-file limit, at most MAX_CONNECTIONS_CEILING, at least 16.

    Each connection is one descriptor; the other quarter is for the model file, logs, the event loop and sockets
    accepted only to be refused. Staying below the limit is what lets the cap work: once accept() fails with EMFILE
    the server can no longer see new clients, let alone evict idle ones to make room.
    """
    limit = open_file_limit()
    if limit is None:
        limit = 1024
    return max(16, min(MAX_CONNECTIONS_CEILING, limit * 3 // 4))


def hardened_config(app: Any, *, log_level: str, header_timeout: float = 10.0, idle_timeout: float = 5.0,
                    body_timeout: float = 60.0, max_connections: int | None = None,
                    max_header_bytes: int = 64 * 1024, http: Literal["auto", "httptools", "h11"] = "auto",
                    **kwargs: Any) -> HardenedConfig:
    """A uvicorn.Config whose connections time out (see the module docstring) and are capped.

    ``idle_timeout`` becomes uvicorn's ``timeout_keep_alive``; ``max_connections`` defaults to
    ``default_max_connections()`` (call ``raise_fd_limit()`` first). ``limit_concurrency`` defaults to one more than
    the cap, as uvicorn counts the asking connection itself: it then bounds only requests still running after their
    clients left. Other keyword arguments go to uvicorn.Config.
    """
    if max_connections is None:
        max_connections = default_max_connections()
    limit = open_file_limit()
    if limit is not None and max_connections > limit - 32:
        log.warning("max_connections=%d is close to the open-file limit (%d): connections may fail with EMFILE",
                    max_connections, limit)
    if http == "auto":
        protocol: type[_Hardening] = HardenedHttpToolsProtocol or HardenedH11Protocol
    elif http == "httptools":
        if HardenedHttpToolsProtocol is None:  # pragma: no cover
            raise ValueError("http='httptools' needs the httptools package")
        protocol = HardenedHttpToolsProtocol
    else:
        protocol = HardenedH11Protocol
    kwargs.setdefault("limit_concurrency", max_connections + 1)
    kwargs.setdefault("h11_max_incomplete_event_size", max_header_bytes)
    limits = Limits(header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections,
                    max_header_bytes=max_header_bytes)
    return HardenedConfig(app, limits=limits, log_level=log_level, http=protocol,
                          timeout_keep_alive=idle_timeout, **kwargs)  # type: ignore[arg-type]


def listen(host: str, port: int, what: str) -> socket.socket | None:
    """A listening socket on ``host:port``, or ``None`` after printing why not (a port in use is a clear
    message, not a traceback from inside uvicorn). ``what`` names who might already be there."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror}\n  -> Is {what} already running there? "
              "Stop it, or choose --port.", file=sys.stderr)
        return None


def serve_until_stopped(app: Any, sock: socket.socket, *, log_level: str, access_log: bool) -> None:
    """Serve ``app`` on ``sock`` with the hardened settings until Ctrl-C or SIGTERM (both end it cleanly)."""
    raise_fd_limit()
    config = hardened_config(app, log_level=log_level, timeout_graceful_shutdown=3, access_log=access_log)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler that
    # was there before it: make SIGTERM's a quiet no-op, so that `docker stop` ends with exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass

