"""`llm-experiment create/list/show/cp/rm/pull/ps`, the ollama CLI's namesakes, against the engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_experiment import check
from llm_experiment.engine.models import bundled_gguf

ROOT = Path(__file__).resolve().parent.parent


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_experiment", *args, "--server", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def modelfile(tmp_path) -> Path:
    path = tmp_path / "Modelfile"
    path.write_text('# a pirate\nFROM smollm2:135m\nSYSTEM """You are a pirate.\nAnswer like one."""\n'
                    "PARAMETER temperature 0.3\nPARAMETER stop User:\nMESSAGE user Hello\nMESSAGE assistant Ahoy!\n")
    return path


def test_create_list_show_cp_rm(url, modelfile):
    created = cli(url, "create", "cli-pirate", "-f", str(modelfile))
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[-2:] == ["writing manifest", "success"]
    listed = cli(url, "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(line.startswith("cli-pirate:latest ") for line in listed)
    shown = cli(url, "show", "cli-pirate").stdout
    assert "architecture        llama" in shown and "temperature" in shown and "You are a pirate." in shown
    assert cli(url, "show", "cli-pirate", "--system").stdout == "You are a pirate.\nAnswer like one.\n"
    assert "MESSAGE assistant" in cli(url, "show", "cli-pirate", "--modelfile").stdout
    assert cli(url, "cp", "cli-pirate", "cli-pirate2").stdout == "copied 'cli-pirate' to 'cli-pirate2'\n"
    removed = cli(url, "rm", "cli-pirate", "cli-pirate2")
    assert removed.stdout.splitlines() == ["deleted 'cli-pirate'", "deleted 'cli-pirate2'"]
    missing = cli(url, "rm", "cli-pirate")
    assert missing.returncode == 1 and missing.stderr == "Error: model 'cli-pirate' not found\n"


def test_create_from_a_gguf_next_to_the_modelfile(url, tmp_path):
    (tmp_path / "weights.gguf").symlink_to(bundled_gguf())
    (tmp_path / "Modelfile").write_text("FROM ./weights.gguf\nPARAMETER num_predict 2\n")
    created = cli(url, "create", "cli-local", "-f", str(tmp_path / "Modelfile"))
    assert created.returncode == 0, created.stderr
    assert "copying file" in created.stdout and "success" in created.stdout
    assert "quantization        Q4_1" in cli(url, "show", "cli-local").stdout
    cli(url, "rm", "cli-local")


def test_a_broken_modelfile_is_reported_with_its_line(url, tmp_path):
    (tmp_path / "Modelfile").write_text("FROM smollm2:135m\nPARAMETER colour red\n")
    result = cli(url, "create", "x", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 1 and "line 2" in result.stderr and "unknown parameter 'colour'" in result.stderr


def test_an_unsupported_template_construct_is_refused_by_name(url, tmp_path):
    (tmp_path / "Modelfile").write_text('FROM smollm2:135m\nTEMPLATE """{{ printf "%s" .Prompt }}"""\n')
    result = cli(url, "create", "x", "-f", str(tmp_path / "Modelfile"))
    assert result.returncode == 1 and 'unsupported function "printf"' in result.stderr


def test_pull_and_ps(url):
    pulled = cli(url, "pull", "smollm2:135m")
    assert pulled.returncode == 0 and "100%" in pulled.stdout and pulled.stdout.rstrip().endswith("success")
    shown: list[str] = []
    check.pull(url, "smollm2:135m", shown.append)  # notebook 00's pull, over requests: the same lines
    assert pulled.stdout.splitlines()[0] == "".join(shown).splitlines()[0] == "  pulling manifest"
    assert pulled.stdout.splitlines()[-3:] == "".join(shown).splitlines()[-3:]
    unknown = cli(url, "pull", "no-such-model")
    assert unknown.returncode == 1 and unknown.stderr == "Error: pull model manifest: file does not exist\n"
    cli(url, "show", "smollm2:135m")
    import requests

    requests.post(url + "/api/generate", json={"model": "smollm2:135m", "keep_alive": "5m"}, timeout=60)
    ps = cli(url, "ps").stdout.splitlines()
    assert ps[0].split()[:3] == ["NAME", "ID", "SIZE"] and ps[1].startswith("smollm2:135m")


def test_no_server_is_a_clear_error():
    from llm_experiment.embedded import free_port

    result = cli(f"http://127.0.0.1:{free_port()}", "list")
    assert result.returncode == 1 and "llm-experiment serve" in result.stderr
