"""One embedded engine for the whole pytest session, shared by the tests and the notebooks.

It starts in ``pytest_sessionstart`` because nbval starts notebook kernels before any fixture
runs: the kernels find the engine through ``OLLAMA_HOST``, which they inherit from this process.
The tests' fixtures find it through ``LLM_EXPERIMENT_TEST_ENGINE`` and its log through
``LLM_EXPERIMENT_TEST_ENGINE_LOG``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llm_experiment.embedded import EmbeddedServer

_started: list[EmbeddedServer] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llm-experiment-"))
    log_path = folder / "engine.log"
    env = {"OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_MODELS": str(folder / "models")}  # a fresh, private model store
    server = EmbeddedServer(log=open(log_path, "w"), env=env)  # noqa: SIM115
    server.start()
    _started.append(server)
    os.environ["OLLAMA_HOST"] = os.environ["LLM_EXPERIMENT_TEST_ENGINE"] = server.url
    os.environ["LLM_EXPERIMENT_TEST_ENGINE_LOG"] = str(log_path)
    os.environ["LLM_EXPERIMENT_TEST_MODELS"] = env["OLLAMA_MODELS"]
    os.environ.pop("LLM_MODEL", None)  # the course's default model, smollm2:135m


def pytest_sessionfinish(session: pytest.Session) -> None:
    for server in _started:
        server.stop()
        if server.log:
            server.log.close()
