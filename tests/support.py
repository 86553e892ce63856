"""What the tests share: the model name, greedy options, the documented 500s, and starting extra engines."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from llm_experiment.embedded import EmbeddedServer

MODEL = "smollm2:135m"
#: Deterministic output for assertions on content.
GREEDY = {"temperature": 0, "seed": 42}
#: The 500s a client may get from Ollama for a request (everything else must be a 2xx or a 4xx).
DOCUMENTED_500 = re.compile(
    r'^(option "[^"]*" must be of |invalid format: |invalid JSON schema in format|model runner has unexpectedly '
    r"stopped|llama runner process has terminated|template: |pull model manifest: file does not exist"
    r"|failed to marshal completion request: json: unsupported value"  # a float32 option past float32
    r"|json: cannot unmarshal \w+ into Go value of type (\[\])?string$"  # create: a license neither text nor list
    # the legacy /api/embeddings answers every failure of the embedding itself with 500, as Ollama
    r"|the input length exceeds the context length$|input after truncation exceeds maximum context length$"
    r'|"[^"]*" does not support embeddings)')


class RunningEngine:
    """A started engine: its URL and the log it writes (stdout and stderr)."""

    def __init__(self, url: str, log_path: Path, server: EmbeddedServer | None = None):
        self.url = url
        self.log_path = log_path
        self.server = server

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_engine(tmp: Path, name: str, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> tuple[RunningEngine, IO[str]]:
    """Start one more engine (for settings the shared one does not have); the caller stops it."""
    log_path = tmp / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller
    server = EmbeddedServer(log=log, args=args, env={"OLLAMA_MODELS": str(tmp / "models"), **(env or {})})
    server.start()
    return RunningEngine(server.url, log_path, server), log


@contextlib.contextmanager
def engine_running(tmp: Path, name: str, args: list[str] | None = None,
                   env: dict[str, str] | None = None) -> Iterator[RunningEngine]:
    """One more engine (for settings the shared one does not have), stopped at the end of the block."""
    running, log = start_engine(tmp, name, args, env)
    try:
        yield running
    finally:
        assert running.server is not None
        running.server.stop()
        log.close()


class ServedApp:
    """An ASGI app served by uvicorn (with the engine's hardened settings) in a thread, on a free port.

    >>> with ServedApp(create_app()) as url:  # doctest: +SKIP
    ...     requests.get(url + "/health")
    """

    def __init__(self, app: object):
        import socket
        import threading

        import uvicorn

        from llm_experiment.engine.connections import hardened_config

        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(hardened_config(app, log_level="warning", max_connections=64,
                                                     timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the app did not start at {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def unload_all_but(url: str, keep: str = MODEL) -> None:
    """Unload every loaded model except ``keep``: tests that load others (all-minilm) clean up after
    themselves, since others assert what /api/ps lists. (An empty generate with keep_alive 0 unloads
    any model, an embedding model too, as in Ollama.)"""
    import requests

    for entry in requests.get(url + "/api/ps", timeout=30).json()["models"]:
        if entry["name"] != keep:
            requests.post(url + "/api/generate", json={"model": entry["name"], "keep_alive": 0}, timeout=60)
