"""docker-compose.yml, its GPU override, the Dockerfile: checked without a Docker daemon.

The compose files are validated against the Compose Specification's JSON schema (vendored in
``tests/data/compose-spec.json``, see ``compose-spec.NOTICE``) and, when ``docker-compose`` or
``docker compose`` is installed, by ``config``, which checks them offline as ``up`` would. The
rest reads the YAML: the services the README names, the model volume, the healthchecks and start
order, the ports from the environment with their documented defaults, nothing privileged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

SERVICES = {"ollama", "pull-models", "jupyter", "chatbot", "classroom", "queue", "worker"}
# service: (variable, default host port, container port)
PORTS = {"ollama": ("OLLAMA_PORT", "11434", 11434), "jupyter": ("JUPYTER_PORT", "8888", 8888),
         "chatbot": ("CHATBOT_PORT", "9000", 9000), "classroom": ("CLASSROOM_PORT", "11435", 11435),
         "queue": ("QUEUE_PORT", "5000", 5000)}
BIND = "${BIND_ADDRESS:-127.0.0.1}"  # the host address the ports are published on
COURSE_MODELS = ("smollm2:135m", "all-minilm")

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}; $$ is a literal $.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def with_defaults(text: str) -> str:
    """What docker compose makes of ``text`` in an empty environment (every variable at its default)."""

    def default(match: re.Match) -> str:
        assert match["op"] in (":-", "-"), f"{match[0]} has no default: `docker compose up` would need it set"
        return match["arg"]

    return VARIABLE.sub(default, text)


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, from the short or the long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target, *_ = volume.split(":")
            mounts.append((source, target))
    return mounts


def readme_services(text: str) -> set[str]:
    """Service names listed in the README under a heading that mentions docker compose.

    A name counts when it is in backticks at the start of a list item (``- `ollama`: ...``) or in the
    first cell of a table row (``| `ollama` | ... |``), in the section under such a heading (up to the
    next heading of the same or a higher level).
    """
    names: set[str] = set()
    level = 0  # inside a docker compose section of this heading level; 0: outside
    for line in text.splitlines():
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        if heading:
            depth = len(heading[1])
            if level and depth <= level:
                level = 0
            if re.search(r"docker[ -]compose", heading[2], re.IGNORECASE):
                level = depth
            continue
        if level:
            item = re.match(r"\s*(?:[-*+]|\d+\.|\|)\s*`([a-z][a-z0-9_-]*)`", line)
            if item:
                names.add(item[1])
    return names


# --- the files are valid Compose files ------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, GPU], ids=lambda p: p.name)
def test_valid_against_the_compose_specification_schema(path):
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # The schema is draft-07, but its $schema (https://json-schema.org/draft-07/schema, without the
    # http and the #) is a spelling jsonschema does not look up: name the draft ourselves.
    assert "draft-07" in schema["$schema"]
    validator = jsonschema.Draft7Validator
    validator.check_schema(schema)
    errors = [f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
              for error in validator(schema).iter_errors(load(path))]
    assert not errors, f"{path.name} breaks the Compose Specification:\n" + "\n".join(errors)


def test_no_obsolete_version_key():
    for path in (COMPOSE, GPU):
        assert "version" not in load(path), f"{path.name}: the `version` key is obsolete in the Compose Specification"


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory):
    """Runs `config` on the compose file alone and with the GPU override, both at once (each takes ~0.4 s).

    In an environment without the file's variables and with an empty --env-file, so that a .env file or
    the developer's settings cannot hide a wrong default.
    """
    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed: only the JSON schema checks the files")
    text = COMPOSE.read_text(encoding="utf-8") + GPU.read_text(encoding="utf-8")
    variables = {m["name"] for m in VARIABLE.finditer(text)}
    env = {k: v for k, v in os.environ.items() if k not in variables and not k.startswith("COMPOSE_")}
    required = {m["name"]: "set-by-test" for m in VARIABLE.finditer(text) if m["op"] in (":?", "?")}
    env.update(required)
    empty = tmp_path_factory.mktemp("compose") / "empty.env"
    empty.write_text("")
    runs = {}
    for name, files in {"compose": [COMPOSE], "compose+gpu": [COMPOSE, GPU]}.items():
        args = [*command, *[a for f in files for a in ("-f", str(f))], "--env-file", str(empty), "config"]
        runs[name] = (args, subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (args, process) in runs.items():
        out, err = process.communicate(timeout=120)
        results[name] = (args, process.returncode, out, err)
    return results


@pytest.mark.parametrize("which", ["compose", "compose+gpu"])
def test_docker_compose_config_accepts_it(compose_config, which):
    args, returncode, out, err = compose_config[which]
    assert returncode == 0, f"`{' '.join(args)}` failed:\n{err}"
    config = yaml.safe_load(out)
    assert SERVICES <= set(config["services"])
    if which == "compose+gpu":
        devices = config["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" for d in devices)


def test_docker_compose_fills_in_the_documented_default_ports(compose_config):
    args, returncode, out, err = compose_config["compose"]
    assert returncode == 0, f"`{' '.join(args)}` failed:\n{err}"
    config = yaml.safe_load(out)
    for name, (_, default, target) in PORTS.items():
        (port,) = config["services"][name]["ports"]
        if isinstance(port, dict):  # docker compose v2 prints the long syntax
            published = (port.get("host_ip"), str(port["published"]), int(port["target"]))
        else:  # docker-compose 1.x: "127.0.0.1:11434:11434/tcp"
            host_ip, host_port, container = port.split("/")[0].rsplit(":", 2)
            published = (host_ip, host_port, int(container))
        assert published == ("127.0.0.1", default, target), f"{name}: {port}"


# --- what the course relies on ---------------------------------------------------------------------------


def test_the_services_the_readme_names_exist(services):
    named = SERVICES | readme_services((ROOT / "README.md").read_text(encoding="utf-8"))
    missing = named - set(services)
    assert not missing, f"services named by the README or the course but not in docker-compose.yml: {sorted(missing)}"


def test_readme_services_parser():
    text = """# Title
- `generate.py`: not a compose section
## Running it all with docker compose
Start with `docker compose up`; the services:
- `ollama`: the server
- `pull-models`: pulls the models
| service | port |
|---|---|
| `chatbot` | 9000 |
### Variables
- `jupyter`: still inside the section
## Next section
- `outside`: not listed
"""
    assert readme_services(text) == {"ollama", "pull-models", "chatbot", "jupyter"}


def test_models_live_in_a_named_volume(compose, services):
    mounts = dict((target, source) for source, target in volume_mounts(services["ollama"]))
    source = mounts.get("/root/.ollama")
    assert source, "ollama: nothing is mounted at /root/.ollama, models would be lost with the container"
    assert source in (compose.get("volumes") or {}), f"{source!r} is not a named volume (a bind mount or anonymous)"


def test_the_classroom_gateway_is_a_profile_with_its_roster_in_a_volume(compose, services):
    classroom = services["classroom"]
    assert classroom["profiles"] == ["classroom"], "the gateway starts only with --profile classroom"
    mounts = dict((target, source) for source, target in volume_mounts(classroom))
    assert mounts.get("/data") in (compose.get("volumes") or {}), "keys and usage must survive the container"
    assert "--db /data/" in classroom["command"] and "--upstream http://ollama:11434" in classroom["command"]
    assert classroom["depends_on"]["ollama"]["condition"] == "service_healthy"


def test_the_task_queue_is_a_profile_sharing_the_roster_and_its_worker_uses_ollama(compose, services):
    queue, worker = services["queue"], services["worker"]
    assert queue["profiles"] == worker["profiles"] == ["queue"]
    mounts = dict((target, source) for source, target in volume_mounts(queue))
    assert mounts.get("/data") == "classroom-data"  # the classroom's roster: one set of keys for both
    assert "--roster /data/classroom.sqlite" in queue["command"] and "--db /data/tasks.sqlite" in queue["command"]
    assert "--host 0.0.0.0" in queue["command"] and "--open" not in queue["command"]
    assert "/health" in " ".join(queue["healthcheck"]["test"])
    assert "--queue http://queue:5000" in worker["command"] and "--ollama http://ollama:11434" in worker["command"]
    assert worker["depends_on"]["queue"]["condition"] == "service_healthy"
    assert worker["environment"]["LLM_QUEUE_KEY"] == "${QUEUE_WORKER_KEY:-}"
    assert "ports" not in worker  # a worker only connects out


def test_ollama_image_is_pinned_and_has_a_working_healthcheck(services):
    ollama = services["ollama"]
    image = with_defaults(ollama["image"])
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", image), f"pin a release of the official image, not {image!r}"
    assert with_defaults(services["pull-models"]["image"]) == image
    test = ollama["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    command = " ".join(test[1:])
    assert command.split()[0] == "ollama", "the official image has the ollama program, but no curl or wget"
    assert not re.search(r"\b(curl|wget)\b", command)


def test_ollama_settings_come_from_the_environment(services):
    environment = services["ollama"]["environment"]
    assert environment["OLLAMA_KEEP_ALIVE"] == "${OLLAMA_KEEP_ALIVE:-5m}"
    assert with_defaults(str(environment["OLLAMA_NUM_PARALLEL"])).isdigit()
    assert environment["OLLAMA_NUM_PARALLEL"].startswith("${OLLAMA_NUM_PARALLEL:-")


def test_pull_models_is_a_one_shot_job_after_a_healthy_ollama(services):
    job = services["pull-models"]
    assert job["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert job["restart"] == "no"
    assert "ports" not in job
    assert with_defaults(job["environment"]["OLLAMA_HOST"]) == "ollama:11434"
    script = with_defaults(json.dumps([job.get("entrypoint"), job["command"], job["environment"]]))
    assert "ollama pull" in script
    for model in COURSE_MODELS:
        assert model in script, f"pull-models does not pull {model}"


def test_start_order(services):
    chatbot = services["chatbot"]["depends_on"]
    assert chatbot["ollama"]["condition"] == "service_healthy"
    assert chatbot["pull-models"]["condition"] == "service_completed_successfully"
    assert services["jupyter"]["depends_on"]["pull-models"]["condition"] == "service_completed_successfully"


def test_jupyter_and_chatbot(services):
    jupyter, chatbot = services["jupyter"], services["chatbot"]
    assert jupyter["build"] in (".", {"context": "."})
    assert chatbot["image"] == jupyter["image"], "the chatbot runs the course image"
    assert jupyter["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    assert ("./notebooks", "/app/notebooks") in volume_mounts(jupyter)
    token = jupyter["environment"]["JUPYTER_TOKEN"]
    assert re.fullmatch(r"\$\{JUPYTER_TOKEN(:-|:\?[^}]+)\}", token), f"a hard-coded token: {token!r}"
    command = with_defaults(chatbot["command"] if isinstance(chatbot["command"], str) else " ".join(chatbot["command"]))
    assert command.split() == ["llm-experiment", "chatbot", "--upstream", "http://ollama:11434",
                               "--host", "0.0.0.0", "--port", "9000", "--model", "smollm2:135m"]
    test = " ".join(chatbot["healthcheck"]["test"])
    assert "http://127.0.0.1:9000/health" in test and "curl" not in test


def test_ports_come_from_the_environment_with_documented_defaults(services):
    header = COMPOSE.read_text(encoding="utf-8")
    for name, service in services.items():
        if name not in PORTS:
            assert "ports" not in service, f"{name} publishes ports"
            continue
        variable, default, target = PORTS[name]
        (port,) = service["ports"]
        assert port in (f"${{{variable}:-{default}}}:{target}", f"{BIND}:${{{variable}:-{default}}}:{target}"), port
    assert re.search(r"OLLAMA_PORT=8008\b.*8008", header), "document OLLAMA_PORT=8008, the older course example's port"


def test_every_variable_has_a_default_and_is_documented():
    for path in (COMPOSE, GPU):
        text = path.read_text(encoding="utf-8")
        with_defaults(text)  # fails on a variable without a default
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        for match in VARIABLE.finditer(text):
            assert re.search(rf"\b{match['name']}=", comments), f"{path.name}: explain {match['name']} in a comment"


@pytest.mark.parametrize("path", [COMPOSE, GPU], ids=lambda p: p.name)
def test_nothing_runs_privileged(path):
    for name, service in load(path)["services"].items():
        assert not service.get("privileged"), f"{name} is privileged"
        assert not service.get("cap_add"), f"{name} adds capabilities"
        for key in ("network_mode", "pid", "ipc", "userns_mode"):
            assert service.get(key) != "host", f"{name}: {key}: host"
        for source, _ in volume_mounts(service):
            assert "docker.sock" not in source, f"{name} mounts the Docker socket"


def test_gpu_override_reserves_nvidia_gpus_for_ollama_only():
    services = load(GPU)["services"]
    assert set(services) == {"ollama"}
    (device,) = services["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_dockerfile_builds_the_course_as_an_ordinary_user():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("#", " "))]
    instructions = [line.split(None, 1) for line in lines]  # continuation lines (indented) left out
    froms = [rest for word, *rest in instructions if word == "FROM"]
    assert froms and froms[0][0].startswith("python:3.11-slim")
    assert "build-essential" in text and "cmake" in text, "llama-cpp-python compiles from source"
    assert "requirements.txt" in text
    users = [rest[0].strip() for word, *rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container runs as root"


def test_dockerignore_keeps_environments_history_and_models_out():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    for pattern in (".venv", ".git", ".env", "**/__pycache__", "**/*.gguf"):
        assert pattern in patterns, f".dockerignore should leave out {pattern}"
    assert not patterns & {"README.md", "pyproject.toml", "requirements.txt", "llm_experiment"}, \
        "pip install -e . needs these in the image"
