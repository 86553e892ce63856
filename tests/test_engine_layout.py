"""The engine's shape: what each side imports, and settings read from the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm_experiment.engine.server import Settings

CLIENT_MODULES = ["llm_experiment", "llm_experiment.modelfile", "llm_experiment.stats", "llm_experiment.plots",
                  "llm_experiment.commands", "llm_experiment.check", "llm_experiment.conversation",
                  "llm_experiment.embedded", "llm_experiment.protocol"]


def test_the_client_side_never_loads_the_engine_or_llama_cpp():
    """A student's notebook imports the helpers; it must not pull in the server (or set its environment)."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CLIENT_MODULES) +
            "print(sorted(m for m in sys.modules if m.startswith(('llm_experiment.engine', 'llama_cpp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_server_process_never_loads_llama_cpp():
    """Native model code runs in runner processes only: importing the whole server must not load it."""
    code = ("import sys\nimport llm_experiment.engine.server, llm_experiment.engine.app\n"
            "print(sorted(m for m in sys.modules if m.startswith('llama_cpp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0s", 0.0), ("10m", 600.0), ("-1", float("inf")),
                                                ("nonsense", 300.0), ("", 300.0)])
def test_ollama_keep_alive_from_the_environment(monkeypatch, value, seconds):
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", value)
    assert Settings.from_env().keep_alive == seconds


def test_ollama_max_loaded_models_and_origins_from_the_environment(monkeypatch):
    monkeypatch.setenv("OLLAMA_MAX_LOADED_MODELS", "5")
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://course.example.org")
    settings = Settings.from_env()
    assert settings.max_loaded == 5
    assert "https://course.example.org" in settings.origins


@pytest.mark.parametrize(("value", "parallel"), [("4", 4), ("1", 1), ("0", 1), ("many", 1), ("", 1), ("9999", 256)])
def test_ollama_num_parallel_from_the_environment(monkeypatch, value, parallel):
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", value)
    assert Settings.from_env().parallel == parallel
