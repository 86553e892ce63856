"""Starting the engine: settings from flags and Ollama's environment variables, then uvicorn."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..hosts import listen_address
from .app import create_app
from .connections import listen, serve_until_stopped
from .models import BUNDLED_NAME, bundled_gguf, models_dir
from .options import DEFAULT_KEEP_ALIVE, DurationError, parse_keep_alive
from .origins import allowed_origins
from .runner import RunnerLimits
from .scheduler import Scheduler
from .state import DEFAULT_MAX_BODY, Engine
from .store import Store

log = logging.getLogger("llm_experiment.engine")

DEFAULT_NUM_CTX = 4096
#: llama.cpp's limit on sequences in one context (LLAMA_MAX_SEQ): the most --parallel can be.
MAX_PARALLEL = 256


@dataclass
class Settings:
    """How the engine runs. ``from_env`` reads the same variables as Ollama."""

    host: str = "127.0.0.1"
    port: int = 11434
    models: str = ""
    max_queue: int = 512
    keep_alive: float = DEFAULT_KEEP_ALIVE
    num_ctx: int = DEFAULT_NUM_CTX
    threads: int | None = None
    max_body: int = DEFAULT_MAX_BODY
    max_loaded: int = 3  # OLLAMA_MAX_LOADED_MODELS: Ollama's default on a CPU
    parallel: int = 1  # OLLAMA_NUM_PARALLEL: requests per model at once, batched (Ollama's default is 1)
    origins: list[str] = field(default_factory=list)  # OLLAMA_ORIGINS, on top of Ollama's defaults
    runner_memory: int = RunnerLimits.memory  # LLM_EXPERIMENT_RUNNER_MEMORY (MiB): each runner's heap cap
    log_level: str = "info"

    @classmethod
    def from_env(cls) -> Settings:
        host, port = listen_address(os.environ.get("OLLAMA_HOST"))
        keep_alive = DEFAULT_KEEP_ALIVE
        try:
            parsed = parse_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE"), env=True)
            keep_alive = DEFAULT_KEEP_ALIVE if parsed is None else parsed  # 0 means unload at once
        except DurationError:
            pass  # Ollama ignores a malformed value too
        return cls(
            host=host, port=port, models=str(models_dir()),
            max_queue=_int_env("OLLAMA_MAX_QUEUE", 512), keep_alive=keep_alive,
            num_ctx=_int_env("OLLAMA_CONTEXT_LENGTH", DEFAULT_NUM_CTX),
            max_loaded=_int_env("OLLAMA_MAX_LOADED_MODELS", 3),
            parallel=min(_int_env("OLLAMA_NUM_PARALLEL", 1), MAX_PARALLEL),
            origins=allowed_origins(os.environ.get("OLLAMA_ORIGINS")),
            runner_memory=_int_env("LLM_EXPERIMENT_RUNNER_MEMORY", RunnerLimits.memory >> 20) << 20,
        )


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def build_engine(settings: Settings) -> Engine:
    scheduler = Scheduler(max_queue=settings.max_queue, keep_alive=settings.keep_alive, num_ctx=settings.num_ctx,
                          threads=settings.threads, max_loaded=settings.max_loaded, parallel=settings.parallel,
                          limits=RunnerLimits(memory=settings.runner_memory))
    return Engine(Store(Path(settings.models)), scheduler, max_body=settings.max_body)


def serve(settings: Settings) -> int:
    """Run the engine until Ctrl-C or SIGTERM; return an exit code."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        gguf = bundled_gguf()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    engine = build_engine(settings)
    try:
        app = create_app(engine, listen_host=settings.host, origins=settings.origins)
    except ValueError as exc:  # an OLLAMA_ORIGINS entry Ollama itself would refuse to start with
        print(f"error: OLLAMA_ORIGINS: {exc}", file=sys.stderr)
        return 2
    sock = listen(settings.host, settings.port, "Ollama (or another engine)")
    if sock is None:
        return 1
    engine.store.cleanup()  # leftovers of killed writes and unused blobs, as Ollama prunes at start-up
    port = sock.getsockname()[1]
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"llm-experiment engine: serving {BUNDLED_NAME} ({gguf.name}) on http://{shown}:{port}\n"
          f"  Ctrl-C to stop. Clients find it with OLLAMA_HOST=http://{shown}:{port}", file=sys.stderr, flush=True)
    serve_until_stopped(app, sock, log_level=settings.log_level, access_log=settings.log_level == "debug")
    print("llm-experiment engine: stopped", file=sys.stderr)
    return 0
