"""The model commands of ``llm-experiment``, named and printed like their ``ollama`` namesakes.

They talk to any Ollama-compatible server (the embedded engine or a real Ollama) through the
official ``ollama`` client.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ollama

from .hosts import server_url
from .modelfile import ModelfileError, parse, to_create_request
from .ndjson import show_progress


def client(server: str | None) -> ollama.Client:
    return ollama.Client(host=server_url(server))


def human_size(n: int | None) -> str:
    """Bytes as ``ollama list`` shows them: decimal units."""
    n = n or 0
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1000
    raise AssertionError


def ago(moment: datetime | None) -> str:
    """``3 minutes ago``, as ``ollama list`` writes it."""
    if moment is None:
        return ""
    seconds = (datetime.now(timezone.utc) - moment).total_seconds()
    for size, unit in ((86400 * 7, "week"), (86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "Less than a second ago"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def create(server: str | None, name: str, modelfile_path: str) -> int:
    """``create NAME -f Modelfile``: parse the Modelfile here, send the JSON form of /api/create."""
    path = Path(modelfile_path)
    try:
        modelfile = parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"Error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except ModelfileError as exc:
        print(f"Error: {path}: {exc}", file=sys.stderr)
        return 1
    if modelfile.adapters:
        print("Error: ADAPTER is not supported by this command; use `ollama create`", file=sys.stderr)
        return 1
    c = client(server)
    weights = Path(modelfile.from_).expanduser()
    if not weights.is_absolute():
        weights = path.parent / weights  # a relative FROM path is relative to the Modelfile, as in Ollama
    if weights.is_file():
        # A local weights file: upload it as a blob, then name it by digest, as `ollama create` does.
        print(f"copying file {weights}", flush=True)
        request = to_create_request(replace(modelfile, from_="uploaded"), name)
        del request["from"]
        request["files"] = {weights.name: c.create_blob(weights)}
    else:
        request = to_create_request(modelfile, name)
    body: dict[str, Any] = {k: v for k, v in request.items() if k != "model"}
    if "from" in body:
        body["from_"] = body.pop("from")
    for status in c.create(name, stream=True, **body):
        print(status.status, flush=True)
    return 0


def list_models(server: str | None) -> int:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in client(server).list().models:
        rows.append([m.model or "", (m.digest or "")[:12], human_size(m.size), ago(m.modified_at)])
    print(table(rows))
    return 0


def show(server: str | None, name: str, part: str | None) -> int:
    info = client(server).show(name)
    if part:
        text = {"modelfile": info.modelfile, "parameters": info.parameters, "template": info.template,
                "license": info.license, "system": _modelfile_system(info.modelfile or "")}[part]
        print(text or "")
        return 0
    details, facts = info.details, info.modelinfo or {}
    arch = facts.get("general.architecture", details.family if details else "")
    rows = [("architecture", arch), ("parameters", details.parameter_size if details else ""),
            ("context length", facts.get(f"{arch}.context_length", "")),
            ("embedding length", facts.get(f"{arch}.embedding_length", "")),
            ("quantization", details.quantization_level if details else "")]
    print("  Model")
    for key, value in rows:
        print(f"    {key:<20}{value}")
    if info.capabilities:
        print("\n  Capabilities")
        for capability in info.capabilities:
            print(f"    {capability}")
    if info.parameters:
        print("\n  Parameters")
        for line in info.parameters.splitlines():
            print(f"    {line}")
    system = _modelfile_system(info.modelfile or "")
    if system:
        print("\n  System")
        for line in system.splitlines()[:4]:
            print(f"    {line}")
    return 0


def _modelfile_system(modelfile: str) -> str:
    """The SYSTEM of a model, read back from its Modelfile (the ollama client does not expose the field)."""
    try:
        return parse(modelfile).system or ""
    except ModelfileError:
        return ""


def copy(server: str | None, source: str, destination: str) -> int:
    client(server).copy(source, destination)
    print(f"copied '{source}' to '{destination}'")
    return 0


def remove(server: str | None, names: list[str]) -> int:
    c = client(server)
    for name in names:
        c.delete(name)
        print(f"deleted '{name}'")
    return 0


def pull(server: str | None, name: str) -> int:
    """``pull NAME``, with the same progress lines as :func:`llm_experiment.check.pull`."""
    statuses = (p.model_dump() for p in client(server).pull(name, stream=True))
    show_progress(statuses, lambda text: print(text, end="", flush=True))
    return 0


def ps(server: str | None) -> int:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in client(server).ps().models:
        until = "Forever" if m.expires_at and m.expires_at.year > 2200 else _until(m.expires_at)
        processor = "100% GPU" if m.size_vram and m.size_vram >= (m.size or 0) else "100% CPU"
        rows.append([m.model or "", (m.digest or "")[:12], human_size(m.size), processor,
                     str(m.context_length or ""), until])
    print(table(rows))
    return 0


def _until(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = (moment - datetime.now(timezone.utc)).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))} seconds from now"
    return f"{int(seconds // 60)} minutes from now"


def run(command: str, *args: Any) -> int:
    """Run one command; turn the client's errors into a message and exit code 1."""
    try:
        return globals()[command](*args)
    except ollama.ResponseError as exc:
        print(f"Error: {exc.error}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"Error: {exc}\n  -> start a server (`llm-experiment serve` or `ollama serve`) or check OLLAMA_HOST",
              file=sys.stderr)
        return 1
