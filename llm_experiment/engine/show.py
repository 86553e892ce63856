"""What ``/api/show`` tells about a model: its Modelfile, parameters, GGUF metadata and tensors.

Everything follows Ollama's ``GetModelInfo`` (server/routes.go), ``Model.String`` (server/images.go)
and ``Command.String`` (parser/parser.go). Reading a GGUF file takes tens of milliseconds: call
:func:`show_response` in a worker thread.
"""

from __future__ import annotations

import math
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from .gguf_info import GGUFError, GGUFInfo, read_gguf
from .models import Model
from .wire import APIError, go_quote, local_time

# Ollama hides these from model_info: the name, and the chat template (shown as TEMPLATE instead).
_HIDDEN = {"general.name", "tokenizer.chat_template"}


@lru_cache(maxsize=16)
def _gguf(path: Path, mtime_ns: int) -> GGUFInfo:
    return read_gguf(path)


def gguf_of(model: Model, *, arrays: bool = False) -> GGUFInfo:
    """The model's GGUF metadata, read safely in Python (no llama.cpp). Call it in a thread.

    Cached without arrays; with ``arrays`` (vocabularies: megabytes of strings) read afresh each time.
    """
    if arrays:
        return read_gguf(model.path, arrays=True)
    return _gguf(model.path, model.path.stat().st_mtime_ns)


def capabilities(path: Path) -> list[str]:
    """What the weights at ``path`` can do (see :attr:`GGUFInfo.capabilities`); ``["completion"]`` if unreadable."""
    try:
        return _gguf(path, path.stat().st_mtime_ns).capabilities
    except (OSError, GGUFError):
        return ["completion"]


def context_length(model: Model) -> int | None:
    """The context the model was trained with (``<arch>.context_length``), or ``None`` if the file does not say."""
    try:
        return gguf_of(model).context_length
    except (OSError, GGUFError):
        return None


def model_info(model: Model, *, verbose: bool = False) -> dict[str, Any]:
    """The GGUF metadata, keys sorted as Go sorts a map, with ``general.parameter_count``.

    Arrays are ``null`` (``[]`` if empty) unless ``verbose``, as Ollama's ``getModelData`` reads them
    (``maxArraySize`` 0: only empty arrays keep their values).
    """
    return _model_info(gguf_of(model, arrays=verbose))


def _model_info(info: GGUFInfo) -> dict[str, Any]:
    return dict(sorted((k, v) for k, v in info.metadata.items() if k not in _HIDDEN))


def _details(model: Model, info: GGUFInfo) -> dict[str, Any]:
    """The stored details; an unknown quantization level is taken from the file, as Ollama does."""
    details = dict(model.details)
    if details.get("quantization_level") in ("", "unknown", None) and info.quantization_level != "unknown":
        details["quantization_level"] = info.quantization_level
    return details


def list_details(model: Model) -> dict[str, Any]:
    """``details`` as ``/api/tags`` gives them: with ``context_length`` and ``embedding_length`` from the
    GGUF file when it has them (Ollama's ``buildModelListSummary``), else as stored. Call it in a thread."""
    try:
        info = gguf_of(model)
    except (OSError, GGUFError):
        return dict(model.details)
    details = _details(model, info)
    for key in ("context_length", "embedding_length"):
        value = info.metadata.get(f"{info.architecture}.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and value and not details.get(key):
            details[key] = value
    return details


def show_response(model: Model, template: str, *, verbose: bool = False, system: str = "",
                  options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``/api/show``: Ollama's ``ShowResponse`` fields in its order, empty ones left out.

    ``system`` and ``options`` are the request's: a system prompt replaces the model's, and options
    are added to the Modelfile's PARAMETERs (not to ``parameters``), as in Ollama.
    """
    try:
        info = gguf_of(model, arrays=verbose)
    except (OSError, GGUFError) as exc:
        raise APIError(500, str(exc)) from None
    system = system or model.system
    answer: dict[str, Any] = {
        "license": "\n".join(model.license),
        "modelfile": modelfile_text(model, template, system=system,
                                    parameters={**model.parameters, **(options or {})}),
        "parameters": parameters_text(model.parameters),
        "template": template,
        "system": system,
        "details": _details(model, info),
        "messages": [{"role": m["role"], "content": m["content"]} for m in model.messages],
        "model_info": _model_info(info),
        "tensors": info.tensors,
        "capabilities": model.capabilities,
        "modified_at": local_time(model.modified_ns),
    }
    # Go's omitempty leaves out empty strings and lists; model_info is always there (an empty map at least).
    return {k: v for k, v in answer.items() if k == "model_info" or v not in ("", [], None)}


def parameters_text(parameters: dict[str, Any]) -> str:
    """One ``name value`` line per parameter, as Ollama writes them (``%-30s %#v``); lists give a line each."""
    lines = []
    for name, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name:<30} {go_value(item, sharp=True)}")
    return "\n".join(lines)


def modelfile_text(model: Model, template: str, *, system: str | None = None,
                   parameters: dict[str, Any] | None = None) -> str:
    """A Modelfile that would rebuild ``model``, as ``ollama show --modelfile`` writes it.

    Lines in Ollama's order (FROM, TEMPLATE, SYSTEM, PARAMETER, LICENSE, MESSAGE); an argument is quoted
    only when it has a newline or surrounding spaces, with ``\"\"\"`` if it also has a ``"``.
    """
    system = model.system if system is None else system
    parameters = model.parameters if parameters is None else parameters
    out = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.name}",
        "",
        f"FROM {model.path}",
        f"TEMPLATE {quote(template)}",
    ]
    if system:
        out.append(f"SYSTEM {quote(system)}")
    for name, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            out.append(f"PARAMETER {name} {quote(go_value(item))}")
    for text in model.license:
        out.append(f"LICENSE {quote(text)}")
    for message in model.messages:
        out.append(f"MESSAGE {message['role']} {quote(message['content'])}")
    return "\n".join(out) + "\n"


def quote(text: str) -> str:
    """A Modelfile argument as Ollama's ``parser.quote`` writes it."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def go_value(value: Any, *, sharp: bool = False) -> str:
    """``value`` (decoded from JSON, as Go holds it: numbers are float64) as Go's ``%v``, or ``%#v`` if ``sharp``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        try:
            return go_float(float(value))
        except OverflowError:  # an int beyond float64: Go's JSON decoding would have refused it
            return str(value)
    if isinstance(value, str):
        return go_quote(value) if sharp else value
    if isinstance(value, list):
        return "[" + " ".join(go_value(v, sharp=sharp) for v in value) + "]"
    return str(value)


def go_float(x: float) -> str:
    """A float64 as Go's ``%v`` prints it: the shortest digits that read back, in exponent form below
    1e-4 and from 1e6 up: ``4096``, ``0.7``, ``1e+06``, ``1.234567e+06``, ``1e-05``."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)
    exponent += len("".join(map(str, digit_tuple))) - len(digits)  # the zeros stripped
    point = len(digits) + exponent  # the decimal point's place after the first digit of ``digits``
    minus = "-" if sign else ""
    e = point - 1
    if e < -4 or e >= 6:  # strconv's 'g' with the shortest precision decides with an eprec of 6
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{minus}{digits}{'0' * (point - len(digits))}"
    return f"{minus}{digits[:point]}.{digits[point:]}"
