"""Is everything ready for the course? One [OK]/[FAIL] line per check, with the fix for each failure.

Run it as ``python -m llm_experiment check`` (or ``llm-experiment check``), or call
:func:`run_checks` from a notebook.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .client import generate, get, post
from .embedded import CLIENT_INSTALL, ENGINE_INSTALL, ENGINE_PACKAGES, missing_engine_packages
from .errors import OllamaError
from .hosts import default_model, server_url
from .ndjson import iter_ndjson, show_progress

PACKAGES = ["requests", "ollama", "openai", "numpy", "pandas", "matplotlib", "ipywidgets", "jupyterlab", "nbval"]
TIMEOUT = (5.0, 60.0)


@dataclass
class Check:
    """The outcome of one check: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    notes: list[str] = field(default_factory=list)  # more to know, one line each (printed under the result)

    def __str__(self) -> str:
        lines = [f"[{'OK' if self.ok else 'FAIL'}] {self.name}: {self.detail}"]
        if not self.ok and self.fix:
            lines.append(f"       fix: {self.fix}")
        lines += [f"       {note}" for note in self.notes]
        return "\n".join(lines)


def check_install_set() -> Check:
    """Which install set is here: the full set (with the embedded engine) or the client set, and what is missing.

    Both are fine for the course: the client set talks to a real Ollama, the full set can also serve itself.
    """
    missing = missing_engine_packages()
    if not missing:
        return Check("install set", True, f"the full set with the embedded engine ({ENGINE_INSTALL}): "
                                          "`llm-experiment serve` works")
    what = {pip_name: adds for pip_name, adds in ENGINE_PACKAGES.values()}
    notes = [f"not installed: {name}: {what[name]}" for name in missing]
    notes.append(f"to add the embedded engine (for a machine without Ollama): {ENGINE_INSTALL}")
    return Check("install set", True, f"the client set ({CLIENT_INSTALL}), without the embedded engine: "
                                      "use a real Ollama (`ollama serve`, or OLLAMA_HOST)", notes=notes)


def check_package(name: str) -> Check:
    """Whether a Python package the course uses can be imported."""
    module = name.replace("-", "_")
    if importlib.util.find_spec(module) is None:
        client_set = bool(missing_engine_packages())
        fix = f"{CLIENT_INSTALL}   (or the full set: {ENGINE_INSTALL})" if client_set else ENGINE_INSTALL
        return Check(f"package {name}", False, "not installed", fix)
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = "installed"
    return Check(f"package {name}", True, version)


def check_server(server: str) -> Check:
    """Whether an Ollama-compatible server answers ``GET /api/version`` at ``server``."""
    fix = ("start one in a terminal: `llm-experiment serve` (the course's embedded engine) or `ollama serve`; "
           "if the server is elsewhere, set OLLAMA_HOST (e.g. OLLAMA_HOST=http://teacher:11434)")
    if missing_engine_packages():  # the client set: `llm-experiment serve` needs the engine first
        fix = ("start Ollama in a terminal (`ollama serve`), or set OLLAMA_HOST to a running one (e.g. "
               f"OLLAMA_HOST=http://teacher:11434); or add the embedded engine (`{ENGINE_INSTALL}`, needs a C/C++ "
               "compiler) and run `llm-experiment serve`")
    try:
        version = get("/api/version", server=server, timeout=TIMEOUT).json()["version"]
    except OllamaError as exc:
        if exc.status is None:  # no answer at all: refused, or timed out
            return Check("server", False, f"nothing answers at {server} ({exc.message})", fix)
        return Check("server", False, f"{server} answers, but not like Ollama does ({exc.status}: {exc.message})", fix)
    except (ValueError, KeyError, TypeError):
        return Check("server", False, f"{server} answers, but not like Ollama does", fix)
    return Check("server", True, f"{server} answers (version {version})")


def has_model(server: str, model: str) -> bool:
    """Whether ``GET /api/tags`` lists ``model`` (a name without a tag means ``:latest``)."""
    wanted = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
    models = get("/api/tags", server=server, timeout=TIMEOUT).json()["models"]
    return any(m.get("model", m.get("name")) == wanted or m.get("name") == wanted for m in models)


def pull(server: str, model: str, progress: Callable[[str], None] = print) -> None:
    """``POST /api/pull``, reporting progress through ``progress``; raises :class:`OllamaError` on failure."""
    with post("/api/pull", {"model": model}, server=server, stream=True, timeout=(5.0, 600.0)) as response:
        show_progress(iter_ndjson(response), progress)


def check_model(server: str, model: str, allow_pull: bool = True,
                progress: Callable[[str], None] | None = None) -> Check:
    """Whether the server has ``model``; pulls it (with a progress bar) when it does not and may."""
    name = f"model {model}"
    fix = f"ollama pull {model}   (or on the embedded engine: use smollm2:135m, the model it ships)"
    step = "listing the server's models"
    try:
        if has_model(server, model):
            return Check(name, True, "present on the server")
        if not allow_pull:
            return Check(name, False, "not on the server", fix)
        step = "not on the server, and pulling it"
        pull(server, model, progress or (lambda text: print(text, end="", flush=True)))
        if has_model(server, model):
            return Check(name, True, "pulled just now")
        return Check(name, False, "pulled, but still not listed", fix)
    except OllamaError as exc:
        return Check(name, False, f"{step} failed: {exc.message}", fix)
    except (ValueError, KeyError, TypeError):
        return Check(name, False, f"{step} failed: the server did not answer like Ollama does", fix)


def check_generate(server: str, model: str) -> Check:
    """Whether the model answers a one-token request."""
    try:
        reply = generate("Hi", model=model, server=server, options={"num_predict": 1})
    except OllamaError as exc:
        fix = exc.advice or "`ollama ps` and the server's log may tell more"
        return Check("generate", False, f"{exc.message} ({exc.url})", fix)
    seconds = reply.stats.get("total_duration", 0) / 1e9
    return Check("generate", True, f"{model} answers ({seconds:.2f} s for one token, including any load)")


def run_checks(server: str | None = None, model: str | None = None, allow_pull: bool = True,
               out: Callable[[str], None] = print) -> bool:
    """Run every check, print one line each, and return whether all passed."""
    server = server_url(server)
    model = model or default_model()
    results = [check_install_set(), *(check_package(name) for name in PACKAGES)]
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
