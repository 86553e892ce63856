"""Reading request bodies the way Ollama's Go server does, with its error messages."""

from __future__ import annotations

import json
from typing import Any

from .wire import APIError

# JSON field -> Go type, per request struct (api/types.go). "any" fields take any JSON value.
_MESSAGE = {"role": "string", "content": "string", "images": "[]string", "tool_calls": "[]any",
            "tool_name": "string", "thinking": "string"}
FIELDS: dict[str, dict[str, Any]] = {
    "GenerateRequest": {
        "model": "string", "prompt": "string", "suffix": "string", "system": "string", "template": "string",
        "context": "[]int", "stream": "bool", "raw": "bool", "format": "any", "keep_alive": "any",
        "images": "[]string", "options": "map", "think": "any",
    },
    "ChatRequest": {
        "model": "string", "messages": [_MESSAGE], "stream": "bool", "format": "any", "keep_alive": "any",
        "tools": "[]any", "options": "map", "think": "any",
    },
    "ShowRequest": {"model": "string", "name": "string", "system": "string", "verbose": "bool", "options": "map"},
}

_GO_NAMES = {"string": "string", "bool": "bool", "map": "map[string]interface {}", "[]string": "[]string",
             "[]int": "[]int", "[]any": "[]interface {}", "int": "int",
             "any": "interface {}"}
_EXPECTING = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
}


def parse_body(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode ``raw`` as the Go struct ``struct``; raise :class:`APIError` (400) as Ollama would."""
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise APIError(400, "missing request body")
    try:
        # Go's decoder reads the first JSON value and ignores what follows it.
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except json.JSONDecodeError as exc:
        raise APIError(400, _go_syntax_error(exc)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.{struct}")
    _check(value, FIELDS[struct], struct, "")
    return value


def _go_syntax_error(exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(exc.doc.rstrip()):
        return "unexpected EOF"
    char = exc.doc[exc.pos]
    return f"invalid character {char!r} {_EXPECTING.get(exc.msg, 'looking for beginning of value')}".replace('"', "'")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check(obj: dict[str, Any], spec: dict[str, Any], struct: str, path: str) -> None:
    for key, value in obj.items():
        kind = spec.get(key)
        if kind is None or kind == "any" or value is None:
            continue  # unknown fields are ignored, null leaves the zero value, as in Go
        where = f"{path}{key}"
        if isinstance(kind, list):  # a list of structs (chat messages)
            if not isinstance(value, list):
                _fail(value, struct, where, "[]api.Message")
            for item in value:
                if item is not None and not isinstance(item, dict):
                    _fail(item, struct, where, "api.Message")
                _check(item or {}, kind[0], struct, where + ".")
        elif kind.startswith("[]") and isinstance(value, list):
            element = kind[2:]
            for item in value:
                if item is not None and not _matches(item, element):
                    _fail(item, struct, where, _GO_NAMES[element])
        elif not _matches(value, kind):
            _fail(value, struct, where, _GO_NAMES[kind])


def _matches(value: Any, kind: str) -> bool:
    """Whether a JSON value decodes into the Go type ``kind`` (lists checked by the caller)."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "map":
        return isinstance(value, dict)
    if kind == "int":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    if kind == "any":
        return True
    return isinstance(value, list)  # "[]..."


def _fail(value: Any, struct: str, where: str, go_type: str) -> None:
    kind = _json_kind(value)
    if kind == "number" and go_type == "int":
        kind = f"number {value}"
    raise APIError(400, f"json: cannot unmarshal {kind} into Go struct field {struct}.{where} of type {go_type}")
