"""Ollama's Host and Origin checks (engine/origins.py), over real sockets and with hand-made ASGI scopes.

The expected answers come from ollama's server/routes.go, envconfig/config.go (and its TestOrigins) and
gin-contrib/cors v1.7.2, which Ollama uses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from llm_experiment.engine import origins as origins_module
from llm_experiment.engine.origins import OllamaAccessMiddleware, allowed_origins

ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,X-Stainless-Arch,"
    "X-Stainless-Async,X-Stainless-Custom-Poll-Interval,X-Stainless-Helper-Method,X-Stainless-Lang,"
    "X-Stainless-Os,X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
    "X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout"
)
# envconfig/config_test.go TestOrigins, the defaults appended to every OLLAMA_ORIGINS value
DEFAULT_ORIGINS = [
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OLLAMA_ORIGINS from the caller's shell; no interface address counts unless a test says so."""
    monkeypatch.delenv("OLLAMA_ORIGINS", raising=False)
    monkeypatch.setattr(origins_module, "_interface_addresses", lambda: set())


# --- driving the middleware with hand-made scopes -------------------------------------------------------


@dataclass
class Result:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reached: bool  # whether the wrapped app was called

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Recorder:
    """A trivial ASGI app answering 200 "ok" and remembering the scopes it saw."""

    scopes: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def call(
    listen_host: str = "127.0.0.1",
    *,
    origins: list[str] | None = None,
    method: str = "GET",
    host: str | None = "127.0.0.1:11434",
    origin: str | None = None,
) -> Result:
    """One request through OllamaAccessMiddleware(Recorder()); host None sends no Host header."""
    app = Recorder()
    middleware = OllamaAccessMiddleware(app, listen_host=listen_host, origins=origins)
    headers = [(b"host", host.encode())] if host is not None else []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": "/api/generate", "raw_path": b"/api/generate", "query_string": b"", "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    headers_out = [(k.decode(), v.decode()) for k, v in start["headers"]]
    return Result(start["status"], headers_out, b"".join(m.get("body", b"") for m in bodies), bool(app.scopes))


# --- Host checks (routes.go allowedHostsMiddleware, allowedHost, isLocalIP) -------------------------------


@pytest.mark.parametrize("host", [
    "localhost", "localhost:11434", "LocalHost:1", "127.0.0.1", "127.0.0.1:11434", "127.9.9.9:80",
    "[::1]:11434", "::1",  # unbracketed "::1" fails SplitHostPort, then parses as an address
    "0.0.0.0:11434", "[::]:11434", "[::ffff:127.0.0.1]:11434",
    "10.1.2.3", "172.16.0.1:11434", "172.31.255.255", "192.168.1.5:11434", "[fd00::1]:11434", "[fc12::7]:1",
    "myhost.local", "myhost.local:11434", "MyHost.LOCAL", "x.internal", "db.corp.internal:5432",
    "app.localhost:3000", "",
])
def test_loopback_listener_allows_local_hosts(host: str) -> None:
    result = call(host=host)
    assert (result.status, result.body, result.reached) == (200, b"ok", True)


def test_missing_host_header_is_allowed() -> None:
    assert call(host=None).reached  # HTTP/1.0 without Host: Go's Request.Host is "", which allowedHost accepts


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:11434", "localhost.evil.example", "local", "internal", "evil.localhost.example",
    "8.8.8.8", "203.0.113.7:11434", "172.32.0.1", "169.254.1.1", "100.64.0.1", "[2001:db8::1]:11434",
    "[::1]",  # no port: SplitHostPort fails and "[::1]" is neither an address nor a local name
    "[::1]:11434:1",
])
def test_loopback_listener_refuses_other_hosts(host: str) -> None:
    result = call(host=host)
    assert (result.status, result.body, result.reached) == (403, b"", False)
    assert result.get_all("content-length") == ["0"]


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_every_loopback_listen_address_checks_hosts(listen_host: str) -> None:
    assert call(listen_host, host="evil.example").status == 403


@pytest.mark.parametrize("listen_host", ["0.0.0.0", "::", "[::]", "", "192.168.1.10", "203.0.113.7"])
def test_non_loopback_listener_allows_any_host(listen_host: str) -> None:
    # routes.go: `if addr ... && !addr.Addr().IsLoopback() { c.Next() }`, before any Host check
    for host in ("evil.example", "evil.example:11434", "8.8.8.8", "[::1]"):
        result = call(listen_host, host=host)
        assert (result.status, result.reached) == (200, True), host


def test_machine_hostname_is_allowed() -> None:
    assert call(host=socket.gethostname()).reached
    assert call(host=f"{socket.gethostname().upper()}:11434").reached


def test_hostname_is_read_like_os_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Build-Box-7")
    assert call(host="build-box-7:11434").reached
    assert call(host="build-box-8:11434").status == 403


def test_address_of_a_local_interface_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(origins_module, "_interface_addresses", lambda: {ipaddress.ip_address("203.0.113.7")})
    assert call(host="203.0.113.7:11434").reached
    assert call(host="203.0.113.8:11434").status == 403


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_interface_addresses_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real _interface_addresses
    found = origins_module._interface_addresses()
    assert ipaddress.ip_address("127.0.0.1") in found
    assert ipaddress.ip_address("127.0.0.0") not in found  # a LOCAL route in fib_trie, not an address
    public = [ip for ip in found if not (ip.is_loopback or ip.is_link_local or origins_module._is_private(ip))]
    if public:  # e.g. a documentation or CGNAT address on eth0: Host by that address passes on loopback
        assert call(host=f"[{public[0]}]:1" if public[0].version == 6 else str(public[0])).reached


def test_options_to_an_allowed_name_is_answered_204_by_the_host_check() -> None:
    # allowedHost branch aborts OPTIONS with 204; the address branch hands it to the app (Ollama's 405)
    named = call(method="OPTIONS", host="localhost:11434")
    assert (named.status, named.body, named.reached) == (204, b"", False)
    assert named.get_all("content-length") == []
    assert call(method="OPTIONS", host="127.0.0.1:11434").reached
    assert call("0.0.0.0", method="OPTIONS", host="localhost:11434").reached


# --- Origin checks (gin-contrib/cors with envconfig.AllowedOrigins) ---------------------------------------


def test_allowed_origins_matches_ollama_test_origins() -> None:
    assert allowed_origins(None) == DEFAULT_ORIGINS
    assert allowed_origins("") == DEFAULT_ORIGINS
    assert allowed_origins("http://10.0.0.1") == ["http://10.0.0.1", *DEFAULT_ORIGINS]
    assert allowed_origins("http://172.16.0.1,https://192.168.0.1") == [
        "http://172.16.0.1", "https://192.168.0.1", *DEFAULT_ORIGINS]
    assert allowed_origins(" 'http://a.test,http://b.test' ") == ["http://a.test", "http://b.test", *DEFAULT_ORIGINS]
    assert allowed_origins("http://a.test, *") == ["http://a.test", " *", *DEFAULT_ORIGINS]  # entries not trimmed


@pytest.mark.parametrize("origin", [
    "http://localhost", "https://localhost", "http://localhost:3000", "https://localhost:8443",
    "http://127.0.0.1", "http://127.0.0.1:5173", "https://127.0.0.1:1", "http://0.0.0.0", "http://0.0.0.0:8080",
    "app://obsidian.md", "file://", "tauri://localhost", "vscode-webview://1abc", "vscode-file://vscode-app",
])
def test_default_origins_pass_with_cors_headers(origin: str) -> None:
    result = call(method="POST", origin=origin)
    assert (result.status, result.body, result.reached) == (200, b"ok", True)
    assert result.get_all("access-control-allow-origin") == [origin]
    assert result.get_all("vary") == ["Origin"]
    assert result.get_all("content-type") == ["text/plain"]  # the app's own headers are kept


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://evil.example:11434", "http://localhost.evil.example", "http://localhostx",
    "http://127.0.0.1.nip.io", "https://0.0.0.0.evil.example", "null", "HTTP://LOCALHOST",
    "http://[::1]:3000",  # not among the defaults
    "chrome-extension://abcdef",  # AllowBrowserExtensions only lets OLLAMA_ORIGINS list extensions
])
@pytest.mark.parametrize("method", ["POST", "OPTIONS", "GET"])
def test_other_origins_get_an_empty_403(origin: str, method: str) -> None:
    result = call(method=method, origin=origin)
    assert (result.status, result.body, result.reached) == (403, b"", False)
    assert result.get_all("access-control-allow-origin") == []
    assert result.get_all("content-length") == ["0"]


def test_origin_checks_apply_on_any_listen_address() -> None:
    assert call("0.0.0.0", method="POST", host="192.168.1.10:11434", origin="https://evil.example").status == 403


def test_preflight_from_an_allowed_origin() -> None:
    result = call(method="OPTIONS", origin="http://localhost:3000")
    assert (result.status, result.body, result.reached) == (204, b"", False)
    assert sorted(result.headers) == sorted([
        ("access-control-allow-methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
        ("access-control-allow-headers", ALLOW_HEADERS),
        ("access-control-max-age", "43200"),
        ("vary", "Origin"),
        ("vary", "Access-Control-Request-Method"),
        ("vary", "Access-Control-Request-Headers"),
        ("access-control-allow-origin", "http://localhost:3000"),
    ])


def test_preflight_from_an_allowed_origin_skips_the_host_check() -> None:
    # cors aborts OPTIONS with 204 before allowedHostsMiddleware runs; the real request is then refused
    assert call(method="OPTIONS", host="evil.example", origin="http://localhost:3000").status == 204
    refused = call(method="POST", host="evil.example", origin="http://localhost:3000")
    assert (refused.status, refused.reached) == (403, False)
    assert refused.get_all("access-control-allow-origin") == ["http://localhost:3000"]  # set before the abort


def test_same_origin_requests_are_not_cors_requests() -> None:
    result = call(method="POST", host="127.0.0.1:11434", origin="http://127.0.0.1:11434")
    assert (result.status, result.reached) == (200, True)
    assert result.get_all("access-control-allow-origin") == []
    # ...but DNS rebinding (the page's origin is its own host) still meets the Host check
    assert call(method="POST", host="evil.example:11434", origin="http://evil.example:11434").status == 403
    assert call("0.0.0.0", method="POST", host="evil.example:11434", origin="https://evil.example:11434").reached


def test_requests_without_origin_get_no_cors_headers() -> None:
    for origin in (None, ""):
        result = call(method="POST", origin=origin)
        assert (result.status, result.reached) == (200, True)
        assert result.get_all("access-control-allow-origin") == [] and result.get_all("vary") == []


def test_ollama_origins_wildcard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ORIGINS", "http://*.example.com,https://app.test")
    allowed = call(method="POST", origin="http://chat.example.com")
    assert (allowed.status, allowed.get_all("access-control-allow-origin")) == (200, ["http://chat.example.com"])
    assert call(method="OPTIONS", origin="http://a.b.example.com").status == 204
    assert call(method="POST", origin="https://app.test").status == 200
    assert call(method="POST", origin="http://localhost:8080").status == 200  # defaults stay
    for origin in ("http://example.com", "https://chat.example.com", "http://chat.example.com.evil", "https://evil"):
        assert call(method="POST", origin=origin).status == 403, origin


def test_ollama_origins_star_allows_every_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ORIGINS", "*")
    result = call(method="POST", origin="https://anything.example")
    assert (result.status, result.get_all("access-control-allow-origin"), result.get_all("vary")) == (200, ["*"], [])
    preflight = call(method="OPTIONS", origin="https://anything.example")
    assert (preflight.status, preflight.get_all("access-control-allow-origin")) == (204, ["*"])
    assert preflight.get_all("vary") == []
    assert call(method="POST", host="evil.example", origin="https://anything.example").status == 403  # Host check


def test_ollama_origins_spacing_quirks(monkeypatch: pytest.MonkeyPatch) -> None:
    # entries are used as written: " https://b.test" fails cors Validate (Ollama panics at start), while
    # " *" and " http://*.b.test" pass it but match nothing (" *" is not "*"; the rule wants a leading space)
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://a.test, https://b.test")
    with pytest.raises(ValueError, match="bad origin ' https://b.test'"):
        OllamaAccessMiddleware(Recorder(), listen_host="127.0.0.1")
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://a.test, *, http://*.b.test")
    assert call(method="POST", origin="https://a.test").status == 200
    assert call(method="POST", origin="https://c.test").status == 403
    assert call(method="POST", origin="http://x.b.test").status == 403
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://a.test,http://*.b.test")
    assert call(method="POST", origin="http://x.b.test").status == 200


def test_browser_extensions_need_ollama_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert call(method="POST", origin="chrome-extension://abcdef").status == 403
    monkeypatch.setenv("OLLAMA_ORIGINS", "chrome-extension://*,moz-extension://1234")
    assert call(method="POST", origin="chrome-extension://abcdef").status == 200
    assert call(method="POST", origin="moz-extension://1234").status == 200
    assert call(method="POST", origin="moz-extension://5678").status == 403


def test_explicit_origins_replace_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://from-env.test")
    assert call(method="POST", origin="https://from-env.test").status == 200
    assert call(origins=["https://given.test"], method="POST", origin="https://from-env.test").status == 403
    assert call(origins=["https://given.test"], method="POST", origin="https://given.test").status == 200
    assert call(origins=["https://given.test"], method="POST", origin="http://localhost").status == 403


@pytest.mark.parametrize("value", ["example.com", "http://a.test,", "http://*.*.test", "ws://socket.test"])
def test_origins_ollama_refuses_to_start_with(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OLLAMA_ORIGINS", value)
    with pytest.raises(ValueError, match="bad origin"):
        OllamaAccessMiddleware(Recorder(), listen_host="127.0.0.1")


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_other_scopes_pass_through_untouched(scope_type: str) -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": scope_type, "headers": [(b"host", b"evil.example"), (b"origin", b"https://evil.example")]}
    asyncio.run(OllamaAccessMiddleware(app, listen_host="127.0.0.1")(scope, receive, send))
    assert len(seen) == 1 and seen[0][0] is scope and seen[0][1] is receive and seen[0][2] is send


# --- over a real socket: uvicorn in a thread, a small Starlette app, requests ------------------------------

calls: list[str] = []
release = threading.Event()


async def generate(request: Request) -> PlainTextResponse:
    calls.append(f"{request.method} {(await request.body()).decode()}")
    return PlainTextResponse("ok")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        yield b"first\n"
        for _ in range(500):  # 5 s, then give up waiting for the client
            if release.is_set():
                yield b"second\n"
                return
            await asyncio.sleep(0.01)
        yield b"late\n"

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


STARLETTE = Starlette(routes=[Route("/api/generate", generate, methods=["GET", "POST"]), Route("/stream", stream)])


@contextmanager
def serving(listen_host: str, **options: Any) -> Iterator[str]:
    """Uvicorn on 127.0.0.1:<free port> serving the middleware configured for ``listen_host``; yields the URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = OllamaAccessMiddleware(STARLETTE, listen_host=listen_host, **options)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def loopback() -> Iterator[str]:
    with serving("127.0.0.1") as url:
        yield url


def test_socket_host_checks(loopback: str) -> None:
    calls.clear()
    assert requests.get(f"{loopback}/api/generate", timeout=10).text == "ok"
    for host in ("localhost:11434", "myhost.local", "[::1]:11434", "192.168.0.7", socket.gethostname()):
        assert requests.get(f"{loopback}/api/generate", headers={"Host": host}, timeout=10).status_code == 200, host
    assert len(calls) == 6
    refused = requests.post(f"{loopback}/api/generate", data="hi", headers={"Host": "evil.example"}, timeout=10)
    assert (refused.status_code, refused.content, refused.headers["Content-Length"]) == (403, b"", "0")
    assert len(calls) == 6


def test_socket_drive_by_text_plain_post_is_refused(loopback: str) -> None:
    calls.clear()
    headers = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
    refused = requests.post(f"{loopback}/api/generate", data='{"model": "x"}', headers=headers, timeout=10)
    assert (refused.status_code, refused.content) == (403, b"")
    assert "Access-Control-Allow-Origin" not in refused.headers
    preflight = requests.options(f"{loopback}/api/generate", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, timeout=10)
    assert (preflight.status_code, preflight.content) == (403, b"")
    assert calls == []
    allowed = requests.post(f"{loopback}/api/generate", data="hi", timeout=10,
                            headers={"Content-Type": "text/plain", "Origin": "http://localhost:5173"})
    assert (allowed.status_code, allowed.text, calls) == (200, "ok", ["POST hi"])
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert allowed.headers["Vary"] == "Origin"


def test_socket_preflight_from_an_allowed_origin(loopback: str) -> None:
    response = requests.options(f"{loopback}/api/generate", timeout=10, headers={
        "Origin": "vscode-webview://abc", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-stainless-os"})
    assert (response.status_code, response.content) == (204, b"")
    assert response.headers["Access-Control-Allow-Origin"] == "vscode-webview://abc"
    assert response.headers["Access-Control-Allow-Methods"] == "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == ALLOW_HEADERS
    assert response.headers["Access-Control-Max-Age"] == "43200"
    assert response.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def test_socket_responses_stream_through(loopback: str) -> None:
    release.clear()
    with requests.get(f"{loopback}/stream", headers={"Origin": "http://localhost:3000"}, stream=True,
                      timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        chunks = response.iter_content(chunk_size=None)
        started = time.monotonic()
        assert next(chunks) == b"first\n"  # arrives while the app is still waiting for `release`
        assert time.monotonic() - started < 4
        release.set()
        assert b"".join(chunks) == b"second\n"


def test_socket_any_host_when_listening_on_all_addresses() -> None:
    # the socket is on 127.0.0.1, but the middleware is told what Ollama would see on 0.0.0.0
    with serving("0.0.0.0") as url:
        assert requests.get(f"{url}/api/generate", headers={"Host": "evil.example"}, timeout=10).text == "ok"
        evil = requests.post(f"{url}/api/generate", headers={"Origin": "https://evil.example"}, timeout=10)
        assert evil.status_code == 403


def test_socket_ollama_origins_wildcard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://*.example.com")
    with serving("127.0.0.1") as url:
        ok = requests.post(f"{url}/api/generate", data="x", headers={"Origin": "https://app.example.com"}, timeout=10)
        assert (ok.status_code, ok.headers["Access-Control-Allow-Origin"]) == (200, "https://app.example.com")
        no = requests.post(f"{url}/api/generate", data="x", headers={"Origin": "https://example.com"}, timeout=10)
        assert no.status_code == 403
