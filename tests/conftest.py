"""Fixtures for the tests. The shared engine itself is started by the root conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import MODEL, RunningEngine


@pytest.fixture(scope="session")
def engine() -> RunningEngine:
    """The embedded engine serving smollm2:135m, started for the session by the root conftest.py."""
    return RunningEngine(os.environ["LLM_EXPERIMENT_TEST_ENGINE"], Path(os.environ["LLM_EXPERIMENT_TEST_ENGINE_LOG"]))


@pytest.fixture
def url(engine: RunningEngine) -> str:
    return engine.url


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Async tests run on asyncio, as uvicorn runs the engine and the gateway. (anyio would also run them on
    trio, which is installed as a dependency of selenium; the code under test uses asyncio directly.)"""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_inherited_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say which server they use; the OLLAMA_HOST set for the notebooks must not leak in."""
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("LLM_MODEL", raising=False)


def pytest_report_header() -> str:
    return f"embedded engine: {MODEL}, {os.cpu_count()} CPU threads"
