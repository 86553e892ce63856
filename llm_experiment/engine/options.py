"""Request ``options`` and ``keep_alive``: Ollama's names, types, defaults and error messages."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# name -> Go type in Ollama's api.Options. Every one is accepted; the engine uses those marked
# in SAMPLING and CONTEXT, the others only matter to a GPU or a different runner.
OPTION_TYPES: dict[str, str] = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string", "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int",
    "use_mmap": "bool", "num_thread": "int",
    # deprecated in Ollama, still accepted
    "mirostat": "int", "mirostat_tau": "float32", "mirostat_eta": "float32", "tfs_z": "float32",
    "penalize_newline": "bool", "low_vram": "bool", "f16_kv": "bool", "logits_all": "bool",
    "vocab_only": "bool", "use_mlock": "bool", "numa": "bool",
}

_TYPE_WORDS = {"int": "integer", "float32": "float32", "bool": "boolean", "[]string": "array"}


@dataclass
class Options:
    """The options that shape one generation, with Ollama's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    seed: int = -1  # -1: a new random seed each request
    num_predict: int = -1  # -1: until the model stops or the context is full
    stop: list[str] = field(default_factory=list)
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_ctx: int | None = None  # None: the server's default context size
    extra: dict[str, Any] = field(default_factory=dict)  # accepted, not used by this engine


class OptionError(ValueError):
    """An option of the wrong type; the message is Ollama's."""


def parse_options(given: dict[str, Any] | None, defaults: dict[str, Any] | None = None) -> Options:
    """Check ``given`` (a request's ``options``) over ``defaults`` (a model's PARAMETERs).

    Unknown names are ignored, as Ollama does (it only logs a warning). ``null`` keeps the default.
    """
    opts = Options()
    for source in (defaults or {}, given or {}):
        for name, value in source.items():
            kind = OPTION_TYPES.get(name)
            if kind is None or value is None:
                continue
            value = _convert(name, kind, value)
            if hasattr(opts, name):
                setattr(opts, name, value)
            else:
                opts.extra[name] = value
    return opts


def _convert(name: str, kind: str, value: Any) -> Any:
    wrong = OptionError(f"option {name!r} must be of type {_TYPE_WORDS[kind]}".replace("'", '"'))
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind == "[]string":
        if not isinstance(value, list):
            raise wrong
        if not all(isinstance(v, str) for v in value):
            raise OptionError(f'option "{name}" must be of an array of strings')
        return list(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise wrong
    return int(value) if kind == "int" else float(value)


# keep_alive ----------------------------------------------------------------------------------

DEFAULT_KEEP_ALIVE = 300.0  # seconds: Ollama's 5m
FOREVER = math.inf

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class DurationError(ValueError):
    """A ``keep_alive`` that is neither a number nor a Go duration string."""


def parse_keep_alive(value: Any, *, env: bool = False) -> float | None:
    """Seconds the model stays loaded after a request: ``None`` (the default), ``inf``, 0 or more.

    Numbers are seconds; strings are Go durations (``"5m"``, ``"1h30m"``, ``"-1s"``). Anything
    negative means forever, as in Ollama. Only in ``OLLAMA_KEEP_ALIVE`` (``env=True``) may a string
    be a plain number of seconds. Errors carry Go's wording.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        seconds = float(text) if env and _NUMBER.fullmatch(text) else _go_duration(text)
    else:
        go_type = "[]interface {}" if isinstance(value, list) else "map[string]interface {}"
        raise DurationError(f"Unsupported type: '{go_type}'")
    return FOREVER if seconds < 0 else seconds


_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def _go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``: a sequence of number+unit, or ``"0"``."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        missing_unit = bool(body) and _NUMBER.fullmatch(body)
        raise DurationError(f'time: {"missing unit in" if missing_unit else "invalid"} duration "{text}"')
    return sign * total
