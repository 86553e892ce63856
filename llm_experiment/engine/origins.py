"""Ollama's Host and Origin checks, as a pure ASGI middleware.

A server on 127.0.0.1 is reachable from every web page the user opens. Through DNS rebinding a page
on ``evil.example`` can reach it under its own host name, and any page can POST ``text/plain`` (a
"simple" request the browser sends without a preflight) to ``/api/generate``. Ollama refuses both:
it answers 403 to cross-origin requests whose Origin is not allowed (``OLLAMA_ORIGINS`` plus local
defaults), and, while listening on loopback, to requests whose Host is not a local name or address.

The rules are copied from ollama's ``server/routes.go`` (``GenerateRoutes``: gin-contrib/cors v1.7.2
configured with ``envconfig.AllowedOrigins()``, then ``allowedHostsMiddleware``) and
``envconfig/config.go`` (``AllowedOrigins``, ``Var``), quirks included.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# routes.go GenerateRoutes: cors.DefaultConfig() methods and max age, Ollama's AllowHeaders.
_ALLOW_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    # OpenAI compatibility headers
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
]
_MAX_AGE_SECONDS = 12 * 60 * 60
# gin-contrib/cors: origins without "*" must start with one of these (DefaultSchemas + ExtensionSchemas,
# as Ollama sets AllowBrowserExtensions). They are not allowed by default: that needs OLLAMA_ORIGINS.
_SCHEMAS = ["http://", "https://", "chrome-extension://", "safari-extension://", "moz-extension://",
            "ms-browser-extension://"]
_LOCAL_TLDS = ["localhost", "local", "internal"]


def allowed_origins(env_value: str | None) -> list[str]:
    """The origins Ollama allows for an ``OLLAMA_ORIGINS`` value (None: unset), as ``envconfig.AllowedOrigins``.

    The value is trimmed of spaces and quotes and split on commas as is (entries are not trimmed); the
    defaults follow: localhost, 127.0.0.1 and 0.0.0.0 over http and https with and without any port,
    then app://, file://, tauri://, vscode-webview:// and vscode-file://.
    """
    value = (env_value or "").strip().strip("\"'")  # envconfig.Var
    origins = value.split(",") if value else []
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    return origins


class OllamaAccessMiddleware:
    """Answers 403 (empty body) to disallowed origins and, when listening on loopback, to non-local Hosts.

    ``listen_host`` is the address the server is bound to; ``origins`` defaults to
    ``allowed_origins(os.environ.get("OLLAMA_ORIGINS"))``. Raises ValueError for origins that would make
    Ollama refuse to start. Responses stream through unchanged apart from the added CORS headers.
    """

    def __init__(self, app: ASGIApp, *, listen_host: str, origins: list[str] | None = None) -> None:
        self.app = app
        self.origins = list(origins) if origins is not None else allowed_origins(os.environ.get("OLLAMA_ORIGINS"))
        self._allow_all, self._exact, self._wildcards = _compile_origins(self.origins)
        self.check_hosts = _listens_on_loopback(listen_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        host = _header(scope, b"host") or ""
        method = scope["method"]

        # gin-contrib/cors applyCors (runs first in Ollama's chain).
        cors: list[tuple[bytes, bytes]] = []
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not self._origin_allowed(origin):
                await _respond(send, 403)
                return
            if method == "OPTIONS":
                await _respond(send, 204, self._preflight_headers(origin))
                return
            cors = self._normal_headers(origin)

        # routes.go allowedHostsMiddleware.
        if self.check_hosts:
            name = _split_host(host)
            ip = _parse_ip(name)
            if ip is not None and (_is_loopback(ip) or _is_private(ip) or _is_unspecified(ip)
                                   or await anyio.to_thread.run_sync(_is_local_ip, ip)):
                pass
            elif _allowed_host(name):
                if method == "OPTIONS":
                    await _respond(send, 204, cors)
                    return
            else:
                await _respond(send, 403, cors)  # the CORS headers set above stay, as in gin
                return

        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _origin_allowed(self, origin: str) -> bool:
        """gin-contrib/cors validateOrigin: "*", a (trimmed, lowercased) exact entry, or a wildcard rule."""
        if self._allow_all or origin in self._exact:
            return True
        for prefix, suffix in self._wildcards:
            if prefix == "*" and origin.endswith(suffix):
                return True
            if suffix == "*" and origin.startswith(prefix):
                return True
            if origin.startswith(prefix) and origin.endswith(suffix):
                return True
        return False

    def _preflight_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"access-control-allow-methods", ",".join(m.upper() for m in _normalize(_ALLOW_METHODS)).encode()),
            (b"access-control-allow-headers", ",".join(_canonical(h) for h in _normalize(_ALLOW_HEADERS)).encode()),
            (b"access-control-max-age", str(_MAX_AGE_SECONDS).encode()),
        ]
        if self._allow_all:
            return [*headers, (b"access-control-allow-origin", b"*")]
        return [
            *headers,
            (b"vary", b"Origin"),
            (b"vary", b"Access-Control-Request-Method"),
            (b"vary", b"Access-Control-Request-Headers"),
            (b"access-control-allow-origin", origin.encode("latin-1")),
        ]

    def _normal_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self._allow_all:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"vary", b"Origin"), (b"access-control-allow-origin", origin.encode("latin-1"))]


def _compile_origins(origins: list[str]) -> tuple[bool, set[str], list[tuple[str, str]]]:
    """gin-contrib/cors Config.Validate, newCors and parseWildcardRules (AllowWildcard on)."""
    for origin in origins:
        if "*" not in origin and not any(origin.startswith(s) for s in _SCHEMAS):
            raise ValueError(f"bad origin {origin!r}: origins must contain '*' or include {','.join(_SCHEMAS)}")
    wildcards: list[tuple[str, str]] = []
    for origin in origins:  # raw entries: " http://*.x" (after a comma and space) never matches
        if "*" not in origin:
            continue
        if origin.count("*") > 1:
            raise ValueError(f"bad origin {origin!r}: only one * is allowed")
        i = origin.index("*")
        if i == 0:
            wildcards.append(("*", origin[1:]))
        elif i == len(origin) - 1:
            wildcards.append((origin[:i], "*"))
        else:
            wildcards.append((origin[:i], origin[i + 1 :]))
    return "*" in origins, set(_normalize(origins)), wildcards


def _normalize(values: list[str]) -> list[str]:
    """gin-contrib/cors normalize: trimmed, lowercased, first occurrences only."""
    return list(dict.fromkeys(v.strip().lower() for v in values))


def _canonical(name: str) -> str:
    """Go's http.CanonicalHeaderKey for plain ASCII names: "openai-beta" -> "Openai-Beta"."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header, like Go's Header.Get."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An empty response, as gin's AbortWithStatus (Go adds Content-Length: 0 except to a 204)."""
    headers = list(headers or [])
    if status != 204:
        headers.append((b"content-length", b"0"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _listens_on_loopback(listen_host: str) -> bool:
    """Whether Ollama would check Host headers for a listener on this address (loopback, or unknown)."""
    host = listen_host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "":
        return False  # ":11434" listens on every address
    ip = _parse_ip(host)
    if ip is None:  # a name: the listener's address is what it resolves to
        try:
            ip = _parse_ip(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
        except (OSError, IndexError):
            return True  # addr.String() did not parse: Ollama checks hosts
    return ip is None or _is_loopback(ip)


def _split_host(hostport: str) -> str:
    """The host part of a Host header: Go's net.SplitHostPort, or the whole value when that fails."""
    i = hostport.rfind(":")
    if i < 0:
        return hostport  # missing port
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return hostport  # missing ']', missing port ("[::1]") or too many colons
        host, j, k = hostport[1:end], 1, end + 1
    else:
        host, j, k = hostport[:i], 0, 0
        if ":" in host:
            return hostport  # too many colons ("::1")
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return hostport
    return host


def _parse_ip(text: str) -> IPAddress | None:
    """Go's netip.ParseAddr, near enough (no brackets, optional IPv6 zone)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_loopback(ip: IPAddress) -> bool:
    """netip.Addr.IsLoopback: 127.0.0.0/8 (also IPv4-mapped) or ::1."""
    ip = _unmap(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.packed[0] == 127
    return int(ip) == 1


def _is_private(ip: IPAddress) -> bool:
    """netip.Addr.IsPrivate: 10/8, 172.16/12, 192.168/16 (also IPv4-mapped) or fc00::/7; narrower than Python's."""
    ip = _unmap(ip)
    b = ip.packed
    if isinstance(ip, ipaddress.IPv4Address):
        return b[0] == 10 or (b[0] == 172 and b[1] & 0xF0 == 16) or (b[0] == 192 and b[1] == 168)
    return b[0] & 0xFE == 0xFC


def _is_unspecified(ip: IPAddress) -> bool:
    """netip.Addr.IsUnspecified: exactly 0.0.0.0 or :: (not mapped, no zone)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return False
    return int(ip) == 0


def _is_local_ip(ip: IPAddress) -> bool:
    """routes.go isLocalIP: an address of one of this machine's interfaces (compared as strings in Go)."""
    if isinstance(ip, ipaddress.IPv6Address) and (ip.scope_id or ip.ipv4_mapped is not None):
        return False  # netip prints "%zone" / "::ffff:a.b.c.d", an interface address never does
    return ip in _interface_addresses()


def _interface_addresses() -> set[IPAddress]:
    """This machine's interface addresses: from /proc on Linux, else what its hostname resolves to."""
    found: set[IPAddress] = set()
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/net/fib_trie") as fib:
                last = ""
                for line in fib:
                    parts = line.split()
                    if parts[:1] == ["|--"]:
                        last = parts[1]
                    elif parts == ["/32", "host", "LOCAL"]:
                        found.add(ipaddress.IPv4Address(last))
            with open("/proc/net/if_inet6") as inet6:
                for line in inet6:
                    found.add(ipaddress.IPv6Address(int(line.split()[0], 16)))
        except (OSError, ValueError, IndexError):
            pass
        if found:
            return found
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            ip = _parse_ip(str(info[4][0]).split("%")[0])
            if ip is not None:
                found.add(ip)
    except OSError:
        pass
    return found


def _allowed_host(host: str) -> bool:
    """routes.go allowedHost: empty, localhost, this machine's hostname, or *.localhost/.local/.internal."""
    host = host.lower()
    if host in ("", "localhost"):
        return True
    if host == socket.gethostname().lower():
        return True
    return any(host.endswith("." + tld) for tld in _LOCAL_TLDS)
