"""Is everything ready for the course? One [OK]/[FAIL] line per check, with the fix for each failure.

Run it as ``python -m llm_experiment check`` (or ``llm-experiment check``), or call
:func:`run_checks` from a notebook.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import requests

from .hosts import default_model, server_url

PACKAGES = ["requests", "ollama", "pandas", "matplotlib", "ipywidgets", "jupyterlab", "nbval"]
TIMEOUT = (5.0, 60.0)


@dataclass
class Check:
    """The outcome of one check: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        line = f"[{'OK' if self.ok else 'FAIL'}] {self.name}: {self.detail}"
        return line if self.ok or not self.fix else f"{line}\n       fix: {self.fix}"


def check_package(name: str) -> Check:
    """Whether a Python package the course uses can be imported."""
    module = name.replace("-", "_")
    if importlib.util.find_spec(module) is None:
        return Check(f"package {name}", False, "not installed", "pip install -r requirements.txt")
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(f"package {name}", True, version)


def check_server(server: str) -> Check:
    """Whether an Ollama-compatible server answers ``GET /api/version`` at ``server``."""
    fix = ("start one in a terminal: `llm-experiment serve` (the course's embedded engine) or `ollama serve`; "
           "if the server is elsewhere, set OLLAMA_HOST (e.g. OLLAMA_HOST=http://teacher:11434)")
    try:
        response = requests.get(server + "/api/version", timeout=TIMEOUT)
        response.raise_for_status()
        version = response.json()["version"]
    except requests.RequestException as exc:
        return Check("server", False, f"nothing answers at {server} ({exc.__class__.__name__})", fix)
    except (ValueError, KeyError):
        return Check("server", False, f"{server} answers, but not like Ollama does", fix)
    return Check("server", True, f"{server} answers (version {version})")


def has_model(server: str, model: str) -> bool:
    """Whether ``GET /api/tags`` lists ``model`` (a name without a tag means ``:latest``)."""
    wanted = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
    models = requests.get(server + "/api/tags", timeout=TIMEOUT).json()["models"]
    return any(m.get("model", m.get("name")) == wanted or m.get("name") == wanted for m in models)


def pull(server: str, model: str, progress: Callable[[str], None] = print) -> None:
    """``POST /api/pull``, reporting progress through ``progress``; raises RuntimeError on failure."""
    on_bar = False  # whether the last thing written is a progress bar still to be ended with a newline
    try:
        with requests.post(server + "/api/pull", json={"model": model}, stream=True, timeout=(5.0, 600.0)) as r:
            if not r.ok:
                raise RuntimeError(r.json().get("error", r.text) if r.content else f"HTTP {r.status_code}")
            for line in r.iter_lines():
                status = json.loads(line) if line else {}
                if "error" in status:
                    raise RuntimeError(status["error"])
                if status.get("total"):
                    share = status.get("completed", 0) / status["total"]
                    bar = "#" * int(share * 30)
                    progress(f"\r  {status['status']} [{bar:<30}] {share:4.0%} of {status['total'] / 1e6:.0f} MB")
                    on_bar = True
                elif status:
                    progress(("\n" if on_bar else "") + f"  {status['status']}\n")
                    on_bar = False
    finally:
        if on_bar:
            progress("\n")


def check_model(server: str, model: str, allow_pull: bool = True,
                progress: Callable[[str], None] | None = None) -> Check:
    """Whether the server has ``model``; pulls it (with a progress bar) when it does not and may."""
    fix = f"ollama pull {model}   (or on the embedded engine: use smollm2:135m, the model it ships)"
    try:
        if has_model(server, model):
            return Check(f"model {model}", True, "present on the server")
        if not allow_pull:
            return Check(f"model {model}", False, "not on the server", fix)
        pull(server, model, progress or (lambda text: print(text, end="", flush=True)))
        if has_model(server, model):
            return Check(f"model {model}", True, "pulled just now")
        return Check(f"model {model}", False, "pulled, but still not listed", fix)
    except (requests.RequestException, RuntimeError, ValueError, KeyError) as exc:
        return Check(f"model {model}", False, f"not on the server, and pulling it failed: {exc}", fix)


def check_generate(server: str, model: str) -> Check:
    """Whether the model answers a one-token request."""
    body = {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    try:
        response = requests.post(server + "/api/generate", json=body, timeout=(5.0, 300.0))
        reply = response.json()
        if not response.ok:
            raise RuntimeError(reply.get("error", response.text))
    except (requests.RequestException, RuntimeError, ValueError) as exc:
        return Check("generate", False, str(exc), "read the error above; `ollama ps` and the server's log may help")
    seconds = reply.get("total_duration", 0) / 1e9
    return Check("generate", True, f"{model} answers ({seconds:.2f} s for one token, including any load)")


def run_checks(server: str | None = None, model: str | None = None, allow_pull: bool = True,
               out: Callable[[str], None] = print) -> bool:
    """Run every check, print one line each, and return whether all passed."""
    server = server_url(server)
    model = model or default_model()
    results = [check_package(name) for name in PACKAGES]
    for result in results:
        out(str(result))
    server_check = check_server(server)
    out(str(server_check))
    results.append(server_check)
    if server_check.ok:
        for run in (lambda: check_model(server, model, allow_pull), lambda: check_generate(server, model)):
            result = run()
            out(str(result))
            results.append(result)
            if not result.ok:
                break
    passed = all(r.ok for r in results)
    out("All checks passed: you are ready for the course." if passed else "Some checks failed: see the fixes above.")
    return passed


def main(server: str | None, model: str | None, allow_pull: bool) -> int:
    return 0 if run_checks(server, model, allow_pull) else 1


if __name__ == "__main__":
    sys.exit(main(None, None, True))
