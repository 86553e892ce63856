"""`llm-experiment serve` as a user starts it: flags, environment, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from llm_experiment.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_serve_honours_ollama_host_and_stops_on_sigterm():
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    process = subprocess.Popen([sys.executable, "-m", "llm_experiment", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=1).text == "Ollama is running":
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            raise AssertionError("the engine did not start")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert f"http://127.0.0.1:{port}" in output and "stopped" in output


def test_serve_says_clearly_when_the_port_is_taken(engine):
    port = engine.url.rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "llm_experiment", "serve", "--port", port], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "already running" in result.stderr


def test_help():
    result = subprocess.run([sys.executable, "-m", "llm_experiment", "serve", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ["--host", "--port", "--models", "--max-queue", "--keep-alive", "--num-ctx", "--parallel"]:
        assert flag in result.stdout


@pytest.mark.parametrize("value", ["0", "257"])
def test_serve_refuses_a_parallel_llama_cpp_cannot_load(value):
    result = subprocess.run([sys.executable, "-m", "llm_experiment", "serve", "--parallel", value], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--parallel: must be between 1 and 256" in result.stderr
