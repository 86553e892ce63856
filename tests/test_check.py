"""`llm-experiment check`: one line per check, a fix for each failure, an honest exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llm_experiment.check import check_model, check_package, pull, run_checks
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
