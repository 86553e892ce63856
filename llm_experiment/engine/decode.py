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
    "PullRequest": {"model": "string", "name": "string", "insecure": "bool", "stream": "bool"},
    "CreateRequest": {
        "model": "string", "name": "string", "from": "string", "files": "map", "adapters": "map",
        "template": "string", "license": "any", "system": "string", "parameters": "map", "messages": [_MESSAGE],
        "stream": "bool", "quantize": "string", "quantization": "string",
    },
    "CopyRequest": {"source": "string", "destination": "string"},
    "DeleteRequest": {"model": "string", "name": "string"},
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
    """Decode ``raw`` as the Go struct ``struct``; raise :class:`APIError` (400) as Ollama would.

    Keys match fields whatever their case, as in Go; the result uses the fields' own names.
    """
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise APIError(400, "missing request body")
    try:
        # Go's decoder reads the first JSON value and ignores what follows it.
        value, _ = json.JSONDecoder(parse_constant=_no_constants).raw_decode(text.lstrip())
    except json.JSONDecodeError as exc:
        raise APIError(400, _go_syntax_error(exc)) from None
    except RecursionError:
        raise APIError(400, "exceeded max depth") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise APIError(400, f"invalid JSON: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.{struct}")
    return _check(value, FIELDS[struct], struct, "")


def _no_constants(name: str) -> Any:
    """Python's json accepts NaN and Infinity; Go's does not."""
    if name.startswith("-"):
        raise APIError(400, "invalid character 'I' in numeric literal")
    raise APIError(400, f"invalid character '{name[0]}' looking for beginning of value")


def _go_syntax_error(exc: json.JSONDecodeError) -> str:
    """Go's wording for a JSON syntax error (encoding/json's scanner)."""
    doc, pos = exc.doc, exc.pos
    rest = doc[pos:].rstrip()
    if exc.msg.startswith("Unterminated string") or not rest or any(
            word.startswith(rest) for word in ("true", "false", "null")):
        return "unexpected EOF"
    if exc.msg.startswith("Invalid control character"):
        where = "in string literal"
    elif exc.msg == "Expecting ',' delimiter" and _innermost_bracket(doc[:pos]) == "[":
        where = "after array element"
    else:
        where = _EXPECTING.get(exc.msg, "looking for beginning of value")
    return f"invalid character {_quote_char(doc[pos])} {where}"


def _quote_char(c: str) -> str:
    """How Go's scanner quotes a character: ``'x'``, ``'"'``, ``'\\''``, ``'\\n'``."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + json.dumps(c, ensure_ascii=False)[1:-1] + "'"


def _innermost_bracket(prefix: str) -> str:
    """The innermost ``[`` or ``{`` still open at the end of ``prefix`` (strings skipped)."""
    stack: list[str] = []
    in_string = escaped = False
    for c in prefix:
        if in_string:
            escaped, in_string = (not escaped and c == "\\"), in_string and (escaped or c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            stack.append(c)
        elif c in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


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


def _check(obj: dict[str, Any], spec: dict[str, Any], struct: str, path: str) -> dict[str, Any]:
    """Type-check ``obj`` against ``spec``; return it with keys renamed to the fields they match."""
    fields = {name.lower(): name for name in spec}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = fields.get(key.lower(), key)
        kind = spec.get(name)
        out[name] = value
        if kind is None or kind == "any" or value is None:
            continue  # unknown fields are ignored, null leaves the zero value, as in Go
        where = f"{path}{name}"
        if isinstance(kind, list):  # a list of structs (chat messages)
            if not isinstance(value, list):
                _fail(value, struct, where, "[]api.Message")
            for item in value:
                if item is not None and not isinstance(item, dict):
                    _fail(item, struct, where, "api.Message")
            out[name] = [None if item is None else _check(item, kind[0], struct, where + ".") for item in value]
        elif kind.startswith("[]") and isinstance(value, list):
            element = kind[2:]
            for item in value:
                if item is not None and not _matches(item, element):
                    _fail(item, struct, where, _GO_NAMES[element])
        elif not _matches(value, kind):
            _fail(value, struct, where, _GO_NAMES[kind])
    return out


def _matches(value: Any, kind: str) -> bool:
    """Whether a JSON value decodes into the Go type ``kind`` (lists checked by the caller)."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "map":
        return isinstance(value, dict)
    if kind == "int":
        whole = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
        return whole and -(2**63) <= value < 2**63  # Go's int is 64 bits
    if kind == "any":
        return True
    return isinstance(value, list)  # "[]..."


def _fail(value: Any, struct: str, where: str, go_type: str) -> None:
    kind = _json_kind(value)
    if kind == "number" and go_type == "int":
        kind = f"number {value}"
    raise APIError(400, f"json: cannot unmarshal {kind} into Go struct field {struct}.{where} of type {go_type}")
