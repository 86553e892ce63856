"""Where the Ollama server is: the ``OLLAMA_HOST`` rules, shared by clients and the engine."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_MODEL = "smollm2:135m"


def parse_host(host: str | None) -> str:
    """Turn an ``OLLAMA_HOST``-style value into a base URL, the way the ``ollama`` client does.

    ``""`` -> ``http://127.0.0.1:11434``, ``"1.2.3.4"`` -> ``http://1.2.3.4:11434``,
    ``":8000"`` -> ``http://127.0.0.1:8000``, ``"https://example.com"`` -> ``https://example.com:443``.
    A port is only implied by the scheme when the scheme is written out.
    """
    host, port = (host or "").strip(), DEFAULT_PORT
    scheme, _, hostport = host.partition("://")
    if not hostport:
        scheme, hostport = "http", host
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443

    split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
    hostname = split.hostname or DEFAULT_HOST
    port = split.port or port
    try:
        if isinstance(ipaddress.ip_address(hostname), ipaddress.IPv6Address):
            hostname = f"[{hostname}]"  # urlsplit drops the brackets an IPv6 URL needs
    except ValueError:
        pass
    path = split.path.strip("/")
    return f"{scheme}://{hostname}:{port}" + (f"/{path}" if path else "")


def server_url(host: str | None = None) -> str:
    """The base URL of the Ollama server: ``host`` if given, else ``$OLLAMA_HOST``, else localhost:11434."""
    return parse_host(host if host is not None else os.environ.get("OLLAMA_HOST"))


def default_model() -> str:
    """The model the course uses: ``$LLM_MODEL`` or ``smollm2:135m``."""
    return os.environ.get("LLM_MODEL") or DEFAULT_MODEL


def listen_address(host: str | None = None) -> tuple[str, int]:
    """Where a server should listen: ``(host, port)`` from ``host`` or ``$OLLAMA_HOST``."""
    url = urllib.parse.urlsplit(server_url(host))
    return url.hostname or DEFAULT_HOST, url.port or DEFAULT_PORT
