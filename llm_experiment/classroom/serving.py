"""Serving the gateway: uvicorn with the engine's hardened settings, each response's head sent with its first piece.

uvicorn writes a response's head (status line and headers) the moment the app sends
``http.response.start``, and its first piece of body in a second write. For a streamed answer that is
two wake-ups of the student's program instead of one, and on a busy machine the first wake-up can move
the student's program onto the gateway's CPU, where it runs first (measured: about 0.6 ms before the
gateway could send the first piece; bench/README.md). :class:`HeadWithBody` holds the head until the
end of the current step of the event loop: when the first piece follows at once (the gateway relays an
answer whose first line is already in), both go out in one write; when it does not, the head goes out
alone a few microseconds later, so nothing waits for the upstream.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

import uvicorn

from ..engine.connections import HardenedConfig, HardenedHttpToolsProtocol, hardened_config, raise_fd_limit


class HeadWithBody:
    """A connection's transport as one response sees it: its first write (the head) waits for the next one,
    or for the end of the current event-loop step, whichever comes first. Everything else goes straight through.
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


if HardenedHttpToolsProtocol is not None:

    class GatewayProtocol(HardenedHttpToolsProtocol):  # type: ignore[misc,valid-type]
        """The engine's hardened httptools protocol, each response writing through a :class:`HeadWithBody`."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and not isinstance(cycle.transport, HeadWithBody):
                cycle.transport = HeadWithBody(cycle.transport, self.loop)

else:  # pragma: no cover - without httptools, uvicorn's h11 protocol as the engine runs it
    GatewayProtocol = None  # type: ignore[assignment,misc]


def gateway_config(app: Any, *, log_level: str, access_log: bool, **kwargs: Any) -> HardenedConfig:
    """The engine's hardened uvicorn settings, with :class:`GatewayProtocol` where httptools is installed."""
    config = hardened_config(app, log_level=log_level, access_log=access_log, **kwargs)
    if GatewayProtocol is not None:
        config.http = GatewayProtocol
    return config


def serve_gateway(app: Any, sock: socket.socket, *, log_level: str, access_log: bool) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM (both end it cleanly), as the engine serves itself."""
    raise_fd_limit()
    config = gateway_config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=3)
    signal.signal(signal.SIGTERM, lambda *_: None)  # uvicorn re-raises it after its graceful shutdown: exit 0
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
