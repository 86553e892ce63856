"""Shared fixtures: one embedded engine for the whole session, on a free port, over a real socket."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_experiment.embedded import EmbeddedServer

MODEL = "smollm2:135m"
#: Deterministic output for assertions on content.
GREEDY = {"temperature": 0, "seed": 42}


class RunningEngine:
    """A started engine: its URL and the log it writes (stdout and stderr)."""

    def __init__(self, server: EmbeddedServer, log_path: Path):
        self.server = server
        self.url = server.url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_engine(tmp: Path, name: str, args: list[str] | None = None, env: dict[str, str] | None = None):
    log_path = tmp / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by the fixture
    server = EmbeddedServer(log=log, args=args, env=env)
    server.start()
    return RunningEngine(server, log_path), log


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    """The embedded engine serving smollm2:135m, shared by the session's tests."""
    running, log = start_engine(tmp_path_factory.mktemp("engine"), "engine", env={"OLLAMA_KEEP_ALIVE": "-1"})
    yield running
    running.server.stop()
    log.close()


@pytest.fixture
def url(engine: RunningEngine) -> str:
    return engine.url


@pytest.fixture(autouse=True)
def _no_inherited_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say which server they use; a developer's OLLAMA_HOST must not leak in."""
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("LLM_MODEL", raising=False)


def pytest_report_header() -> str:
    return f"embedded engine: {MODEL}, {os.cpu_count()} CPU threads"
