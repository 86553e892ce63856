"""Reading request bodies the way Ollama's Go server does, with its error messages.

Ollama binds a body with gin's ``ShouldBindJSON``: ``json.NewDecoder(body).Decode(&req)`` from Go's
``encoding/json``. That decoder reads only the first JSON value, refuses nesting deeper than 10000,
replaces invalid UTF-8 and lone UTF-16 surrogates in strings with U+FFFD, matches keys to fields
ignoring case, keeps the first type error it meets (``UnmarshalTypeError``) but stops at once on an
error from a type's own ``UnmarshalJSON`` (``api.Duration``, ``api.ThinkValue``, ``api.Message``).
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

from .options import DurationError, parse_keep_alive
from .wire import APIError, go_quote

# Nesting deeper than this is refused: Python's parser and the code that walks a request recurse,
# and Python's stack is far smaller than Go's (whose decoder allows 10000 levels).
MAX_DEPTH = 256
TOO_DEEP = f"request JSON nested too deeply: the embedded engine accepts at most {MAX_DEPTH} levels"

# JSON field -> Go type of the field in api/types.go (the strings below are handled in _value).
_MESSAGE = {"role": "string", "content": "string", "thinking": "string", "images": "[]api.ImageData",
            "tool_calls": "[]api.ToolCall", "tool_name": "string", "tool_call_id": "string"}
_SAMPLING = {"stream": "bool", "format": "json.RawMessage", "keep_alive": "*api.Duration",
             "options": "map[string]interface {}", "think": "*api.ThinkValue", "truncate": "bool", "shift": "bool",
             "_debug_render_only": "bool", "logprobs": "bool", "top_logprobs": "int"}
FIELDS: dict[str, dict[str, str]] = {
    "GenerateRequest": {
        "model": "string", "prompt": "string", "suffix": "string", "system": "string", "template": "string",
        "context": "[]int", "raw": "bool", "images": "[]api.ImageData", **_SAMPLING,
    },
    "ChatRequest": {"model": "string", "messages": "[]api.Message", "tools": "api.Tools", **_SAMPLING},
    "ShowRequest": {"model": "string", "system": "string", "template": "string", "verbose": "bool",
                    "options": "map[string]interface {}", "name": "string"},
    "PullRequest": {"model": "string", "insecure": "bool", "username": "string", "password": "string",
                    "stream": "bool", "name": "string"},
    "CreateRequest": {
        "model": "string", "stream": "bool", "quantize": "string", "draft_quantize": "string", "from": "string",
        "remote_host": "string", "files": "map[string]string", "draft_files": "map[string]string",
        "adapters": "map[string]string", "template": "string", "license": "interface {}", "system": "string",
        "parameters": "map[string]interface {}", "messages": "[]api.Message", "renderer": "string",
        "parser": "string", "requires": "string", "info": "map[string]interface {}", "name": "string",
        "quantization": "string",
    },
    "EmbedRequest": {"model": "string", "input": "interface {}", "keep_alive": "*api.Duration", "truncate": "bool",
                     "dimensions": "int", "options": "map[string]interface {}"},
    "EmbeddingRequest": {"model": "string", "prompt": "string", "keep_alive": "*api.Duration",
                         "options": "map[string]interface {}"},
    "CopyRequest": {"source": "string", "destination": "string"},
    "DeleteRequest": {"model": "string", "name": "string"},
}
_PRIMITIVE = {"string", "bool", "int"}  # a JSON null leaves these as they were; it resets the others


def parse_body(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode ``raw`` as the Go struct ``api.<struct>``; raise :class:`APIError` as Ollama would.

    Returns the fields under their JSON names (any case in the body), unknown keys as given, strings
    with invalid UTF-8 and lone surrogates replaced by U+FFFD. A null field is left out (Go's zero
    value); a null message is ``{}``, a null ``context`` id 0, a null image ``""``; byte-array
    images become base64. Errors are 400 with Go's text, except an unusable CreateRequest ``license``
    (500, as Ollama's create handler answers).
    """
    start = _WS.match(raw).end()
    if start == len(raw):
        raise APIError(400, "missing request body")
    try:
        text, invalid_utf8 = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, invalid_utf8 = raw.decode("utf-8", "surrogateescape"), True  # each bad byte becomes a lone surrogate
    scrub = invalid_utf8 or _SURROGATE_ESCAPE.search(raw) is not None
    try:
        return _parse(raw, text, start, struct, scrub, literal=False)
    except _NeedLiterals:  # an error message must quote a number as written: parse again keeping literals
        return _parse(raw, text, start, struct, scrub, literal=True)


# parsing ----------------------------------------------------------------------------------------

_WS = re.compile(rb"[ \t\r\n]*")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _NeedLiterals(Exception):
    """Raised in the fast pass when a message needs a number's literal text."""


class _Constant(Exception):
    """NaN, Infinity or -Infinity: Python's json accepts them, Go's does not."""


class _Number(float):
    """A float that remembers how it was written (``1.0``, ``1e400``); made only on the slow pass."""

    __slots__ = ("literal",)
    literal: str


def _number(text: str) -> _Number:
    number = _Number(text)  # an overflowing literal is inf, as Go's ParseFloat also returns (with an error)
    number.literal = text
    return number


def _big_int(text: str) -> int | _Number:
    try:
        return int(text)
    except ValueError:  # more than Python's 4300 digits: far beyond any Go number type anyway
        return _number(text)


def _reject_constant(name: str) -> Any:
    raise _Constant(name)


def _parse(raw: bytes, text: str, start: int, struct: str, scrub: bool, *, literal: bool) -> dict[str, Any]:
    value = _load(raw, text, start, struct, literal)
    if scrub:
        value = _scrub(value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(400, f"json: cannot unmarshal {_json_kind(value)} into Go value of type api.{struct}")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise APIError(400, TOO_DEEP)
    out, saved = _fields(value, FIELDS[struct], struct, "", literal)
    if saved:
        raise APIError(400, saved)
    if struct == "CreateRequest" and "license" in out:
        out["license"] = _license(out["license"])
    return out


def _load(raw: bytes, text: str, start: int, struct: str, literal: bool) -> Any:
    """The first JSON value after ``start``; syntax errors worded by Go's scanner."""
    hooks: dict[str, Any] = {"parse_float": _number, "parse_int": _big_int} if literal else {}
    decoder = json.JSONDecoder(parse_constant=_reject_constant, **hooks)
    try:
        return decoder.raw_decode(text, start)[0]
    except (json.JSONDecodeError, _Constant) as exc:
        raise APIError(400, _go_scan(raw, start) or f"invalid JSON: {exc}") from None
    except RecursionError:  # nesting deeper than Python's parser goes: Go's scanner tells what Go says
        message = _go_scan(raw, start)
        if message is None:
            message = TOO_DEEP if raw[start] == ord("{") else (
                f"json: cannot unmarshal array into Go value of type api.{struct}")
        raise APIError(400, message) from None
    except ValueError:  # an integer with more digits than Python's int() takes
        if literal:
            raise APIError(400, "json: number literal out of range") from None
        raise _NeedLiterals from None


def scrub_surrogates(raw: bytes, value: Any) -> Any:
    """``value`` (decoded from ``raw`` by Python's json) with lone surrogates replaced by U+FFFD, as Go decodes them."""
    return _scrub(value) if _SURROGATE_ESCAPE.search(raw) else value


def _scrub(root: Any) -> Any:
    """Replace lone surrogates (from ``\\ud800`` escapes or invalid UTF-8) with U+FFFD, keys included."""

    def fix(s: str) -> str:
        return _LONE_SURROGATE.sub("\ufffd", s) if _LONE_SURROGATE.search(s) else s

    def fix_keys(node: Any) -> Any:
        if type(node) is dict and any(_LONE_SURROGATE.search(key) for key in node):
            return {fix(key): value for key, value in node.items()}  # keys that become equal: the last wins
        return node

    if type(root) is str:
        return fix(root)
    if type(root) not in (dict, list):
        return root
    root = fix_keys(root)
    stack = [root]
    while stack:
        node = stack.pop()
        for key, value in (node.items() if type(node) is dict else enumerate(node)):
            if type(value) is str:
                node[key] = fix(value)
            elif type(value) in (dict, list):
                node[key] = value = fix_keys(value)
                stack.append(value)
    return root


def _too_deep(root: Any) -> bool:
    """Whether containers nest more than MAX_DEPTH levels (the top level is 1), without recursion."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = node.values() if type(node) is dict else node
        kinds = set(map(type, children))
        if dict in kinds or list in kinds:
            stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


# checking fields against their Go types --------------------------------------------------------


class _TypeError(Exception):
    """A Go ``UnmarshalTypeError``: saved, decoding goes on, the first one is returned at the end."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


_FOLDED = {id(spec): {name.upper(): name for name in spec} for spec in [*FIELDS.values(), _MESSAGE]}
_SPECIAL_FOLD = {"\u0130": "I"}  # Go's simple lowercase of İ is i; Python's full one is two characters


def _fold(key: str) -> str:
    """Go's ``foldName``: ASCII upper-cased, other runes ``ToUpper(ToLower(r))`` (so K, ſ, ı match)."""
    if key.isascii():
        return key.upper()
    out = []
    for c in key:
        lower = c.lower()
        if len(lower) != 1:
            lower = _SPECIAL_FOLD.get(c, c)
        upper = lower.upper()
        out.append(upper if len(upper) == 1 else lower)
    return "".join(out)


def _fields(obj: dict[str, Any], spec: dict[str, str], struct: str, prefix: str,
            literal: bool) -> tuple[dict[str, Any], str | None]:
    """Check ``obj``'s known fields; return them renamed, with unknown keys, and the first saved error."""
    folded = _FOLDED[id(spec)]
    out: dict[str, Any] = {}
    saved: str | None = None
    for key, value in obj.items():
        name = folded.get(_fold(key))
        if name is None:
            out[key] = value  # Go ignores unknown fields
            continue
        kind = spec[name]
        if value is None:
            if kind not in _PRIMITIVE:
                out.pop(name, None)  # null resets a pointer, slice, map or interface; primitives keep their value
            continue
        try:
            out[name] = _value(value, kind, struct, prefix + name, literal)
        except _TypeError as exc:
            saved = saved or exc.message
    return out, saved


def _value(value: Any, kind: str, struct: str, path: str, literal: bool) -> Any:
    """``value`` checked as Go type ``kind``; raises _TypeError (saved) or APIError (stops decoding)."""
    if kind == "string" or kind == "bool":
        if type(value) is not (str if kind == "string" else bool):
            raise _mismatch(value, struct, path, kind, literal)
        return value
    if kind == "int":
        return _int(value, struct, path, "int", literal)
    if kind == "json.RawMessage":
        return value  # kept as written; Ollama checks format later
    if kind == "interface {}":
        _check_floats(value, struct, path, literal)
        return value
    if kind == "*api.Duration":
        return _duration(value, struct, path, literal)
    if kind == "*api.ThinkValue":
        return _think(value)
    if kind.startswith("map["):
        if type(value) is not dict:
            raise _mismatch(value, struct, path, kind, literal)
        if kind == "map[string]interface {}":
            _check_floats(value, struct, path, literal)
            return value
        strings = {}
        for key, item in value.items():
            if item is not None and type(item) is not str:
                raise _mismatch(item, struct, path, "string", literal)
            strings[key] = item or ""  # null leaves the map's zero value, ""
        return strings
    if type(value) is not list:
        raise _mismatch(value, struct, path, kind, literal)
    if kind == "[]int":
        return _ints(value, struct, path, literal)
    if kind == "[]api.ImageData":
        return [_image(item, struct, path, literal) for item in value]
    if kind == "[]api.Message":
        return [_message(item, struct, literal) for item in value]
    element = "api.Tool" if kind == "api.Tools" else "api.ToolCall"  # inside them: any JSON, checked for overflow
    for item in value:
        if item is not None and type(item) is not dict:
            raise _mismatch(item, struct, path, element, literal)
    _check_floats(value, struct, path, literal)
    return [{} if item is None else item for item in value]


def _mismatch(value: Any, struct: str, path: str, go_type: str, literal: bool) -> _TypeError:
    kind = _json_kind(value)
    if kind == "number" and go_type in ("int", "uint8"):  # Go's ParseInt/ParseUint failed: it quotes the number
        kind = f"number {_literal(value, literal)}"
    return _TypeError(f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} of type {go_type}")


def _literal(number: Any, literal: bool) -> str:
    """The number as written in the body."""
    if isinstance(number, _Number):
        return number.literal
    if type(number) is int:
        return str(number)
    if not literal:
        raise _NeedLiterals
    return repr(number)


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


_INT64 = (-(2**63), 2**63 - 1)


def _int(value: Any, struct: str, path: str, go_type: str, literal: bool) -> int:
    """Go's int: only an integer literal within int64 (``1.0`` and ``1e3`` are refused)."""
    if type(value) is not int or not _INT64[0] <= value <= _INT64[1]:
        raise _mismatch(value, struct, path, go_type, literal)
    return value


def _ints(values: list[Any], struct: str, path: str, literal: bool) -> list[int]:
    kinds = set(map(type, values))
    if kinds <= {int} and (not values or (min(values) >= _INT64[0] and max(values) <= _INT64[1])):
        return values  # the usual case, checked at C speed
    return [0 if item is None else _int(item, struct, path, "int", literal) for item in values]


def _image(item: Any, struct: str, path: str, literal: bool) -> str:
    """An ``api.ImageData`` ([]byte): a base64 string, or (as Go also takes) an array of bytes."""
    if item is None:
        return ""
    if type(item) is str:
        return item
    if type(item) is not list:
        raise _mismatch(item, struct, path, "api.ImageData", literal)
    octets = bytearray()
    for byte in item:
        if byte is not None and (type(byte) is not int or not 0 <= byte <= 255):
            raise _mismatch(byte, struct, path, "uint8", literal)
        octets.append(byte or 0)
    return base64.b64encode(bytes(octets)).decode()


def _message(item: Any, struct: str, literal: bool) -> dict[str, Any]:
    """An ``api.Message``: its UnmarshalJSON decodes an alias type, so its first error stops decoding."""
    if item is None:
        return {}
    if type(item) is not dict:  # the alias type's name shows in Go's message
        raise APIError(400, f"json: cannot unmarshal {_json_kind(item)} into Go struct field {struct}.messages "
                            "of type api.Alias")
    out, saved = _fields(item, _MESSAGE, struct, "messages.", literal)
    if saved:
        raise APIError(400, saved)
    if "role" in out:
        out["role"] = out["role"].lower()  # Message.UnmarshalJSON lower-cases the role
    return out


def _duration(value: Any, struct: str, path: str, literal: bool) -> Any:
    """``api.Duration.UnmarshalJSON``: decodes into ``any``, then takes a number or a duration string."""
    try:
        _check_floats(value, struct, path, literal)
    except _TypeError as exc:  # returned by UnmarshalJSON: it stops decoding
        raise APIError(400, exc.message) from None
    try:
        parse_keep_alive(value)
    except DurationError as exc:
        raise APIError(400, str(exc)) from None
    return value


_THINK_LEVELS = ("high", "medium", "low", "max")


def _think(value: Any) -> Any:
    """``api.ThinkValue.UnmarshalJSON``: a bool or one of the levels."""
    if type(value) is bool or value in _THINK_LEVELS:
        return value
    if type(value) is str:
        raise APIError(400, f'invalid think value: {go_quote(value)} (must be "high", "medium", "low", "max", '
                            "true, or false)")
    raise APIError(400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def _license(value: Any) -> Any:
    """CreateRequest.license: a string, or what re-marshals into ``[]string`` (server/create.go)."""
    if type(value) is str:
        return value
    if type(value) is not list:
        raise APIError(500, f"json: cannot unmarshal {_json_kind(value)} into Go value of type []string")
    for item in value:
        if item is not None and type(item) is not str:
            raise APIError(500, f"json: cannot unmarshal {_json_kind(item)} into Go value of type string")
    return [item or "" for item in value]


_FLOAT_OVERFLOW = 2**1024 - 2**970  # the smallest integer that float64 rounds to infinity
_SCALARS = {str, bool, type(None)}


def _check_floats(root: Any, struct: str, path: str, literal: bool) -> None:
    """Go decodes a number in ``any`` as float64: one too large for it is an error (in document order)."""
    stack = [iter((root,))]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind is dict or kind is list:
                children = item.values() if kind is dict else item
                kinds = set(map(type, children))
                if kinds <= _SCALARS:
                    continue
                if kinds == {int} and -_FLOAT_OVERFLOW < min(children) and max(children) < _FLOAT_OVERFLOW:
                    continue
                stack.append(iter(children))
                break
            if (kind is int and not -_FLOAT_OVERFLOW < item < _FLOAT_OVERFLOW) or (
                    kind in (float, _Number) and math.isinf(item)):
                raise _TypeError(f"json: cannot unmarshal number {_literal(item, literal)} into Go struct field "
                                 f"{struct}.{path} of type float64")
        else:
            stack.pop()


# Go's scanner, for its exact syntax error messages ------------------------------------------------

_MAX_NESTING = 10000  # encoding/json's maxNestingDepth
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _END = range(6)
_STRING_BODY = rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*'
_STRING_PREFIX = re.compile(_STRING_BODY)  # the longest valid start of a string
_SCALAR = rb"(?:" + _STRING_BODY + rb'"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null)'
_INT_PART = re.compile(rb"-?(?:0|[1-9][0-9]*)")
# Runs of simple elements ("1, 2, " or '"k": 1, ') are skipped at C speed, up to 4096 at a time.
_ARRAY_RUN = re.compile(rb"(?:" + _SCALAR + rb"[ \t\r\n]*,[ \t\r\n]*){1,4096}")
_OBJECT_RUN = re.compile(rb"(?:" + _STRING_BODY + rb'"[ \t\r\n]*:[ \t\r\n]*' + _SCALAR
                         + rb"[ \t\r\n]*,[ \t\r\n]*){1,4096}")
_DIGITS = re.compile(rb"[0-9]*")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}


def _go_scan(raw: bytes, i: int) -> str | None:
    """Go's ``Decoder`` over the first JSON value at ``raw[i:]``: its syntax error, or None if valid."""
    n, stack, expect = len(raw), bytearray(), _VALUE
    while True:
        if expect == _END and not stack:
            return None
        i = _WS.match(raw, i).end()
        if i >= n:
            return "unexpected EOF"
        c = raw[i]
        if expect == _END:
            in_object = stack[-1] == ord("{")
            if c == ord(","):
                expect = _KEY if in_object else _VALUE
            elif c == ord("}" if in_object else "]"):
                stack.pop()
            else:
                where = "object key:value pair" if in_object else "array element"
                return f"invalid character {_quote_char(c)} after {where}"
            i += 1
            continue
        if expect == _COLON:
            if c != ord(":"):
                return f"invalid character {_quote_char(c)} after object key"
            i, expect = i + 1, _VALUE
            continue
        if expect in (_KEY, _KEY_OR_CLOSE):
            run = _OBJECT_RUN.match(raw, i)
            if run:
                i, expect = run.end(), _KEY
                continue
            if c == ord("}") and expect == _KEY_OR_CLOSE:
                stack.pop()
                i, expect = i + 1, _END
                continue
            if c != ord('"'):
                return f"invalid character {_quote_char(c)} looking for beginning of object key string"
            error, i = _scan_string(raw, i)
            if error:
                return error
            expect = _COLON
            continue
        if stack and stack[-1] == ord("["):
            run = _ARRAY_RUN.match(raw, i)
            if run:
                i, expect = run.end(), _VALUE
                continue
        if c == ord("]") and expect == _VALUE_OR_CLOSE:
            stack.pop()
            i, expect = i + 1, _END
            continue
        if c in b"[{":
            if len(stack) >= _MAX_NESTING:
                return f"invalid character {_quote_char(c)} exceeded max depth"
            stack.append(c)
            i, expect = i + 1, (_KEY_OR_CLOSE if c == ord("{") else _VALUE_OR_CLOSE)
            continue
        if c == ord('"'):
            error, i = _scan_string(raw, i)
        elif c == ord("-") or ord("0") <= c <= ord("9"):
            error, i = _scan_number(raw, i)
        elif c in _LITERALS:
            error, i = _scan_literal(raw, i)
        else:
            return f"invalid character {_quote_char(c)} looking for beginning of value"
        if error:
            return error
        expect = _END


def _scan_string(raw: bytes, i: int) -> tuple[str | None, int]:
    j = _STRING_PREFIX.match(raw, i).end()
    if j < len(raw) and raw[j] == ord('"'):
        return None, j + 1
    if j >= len(raw):
        return "unexpected EOF", j
    if raw[j] < 0x20:
        return f"invalid character {_quote_char(raw[j])} in string literal", j
    j += 1  # a backslash that starts a bad escape
    if j >= len(raw):
        return "unexpected EOF", j
    if raw[j] != ord("u"):
        return f"invalid character {_quote_char(raw[j])} in string escape code", j
    for k in range(j + 1, j + 5):
        if k >= len(raw):
            return "unexpected EOF", k
        if raw[k] not in _HEX:
            return f"invalid character {_quote_char(raw[k])} in \\u hexadecimal character escape", k
    return "unexpected EOF", j  # not reached: a complete escape would have matched


def _scan_number(raw: bytes, i: int) -> tuple[str | None, int]:
    n = len(raw)
    match = _INT_PART.match(raw, i)
    if match is None:  # "-" not followed by a digit
        return ("unexpected EOF", i + 1) if i + 1 >= n else (
            f"invalid character {_quote_char(raw[i + 1])} in numeric literal", i + 1)
    j = match.end()
    if j < n and raw[j] == ord("."):
        j += 1
        if j >= n:
            return "unexpected EOF", j
        if not ord("0") <= raw[j] <= ord("9"):
            return f"invalid character {_quote_char(raw[j])} after decimal point in numeric literal", j
        j = _DIGITS.match(raw, j).end()
    if j < n and raw[j] in b"eE":
        j += 1
        if j < n and raw[j] in b"+-":
            j += 1
        if j >= n:
            return "unexpected EOF", j
        if not ord("0") <= raw[j] <= ord("9"):
            return f"invalid character {_quote_char(raw[j])} in exponent of numeric literal", j
        j = _DIGITS.match(raw, j).end()
    return None, j


def _scan_literal(raw: bytes, i: int) -> tuple[str | None, int]:
    word = _LITERALS[raw[i]]
    for k in range(1, len(word)):
        if i + k >= len(raw):
            return "unexpected EOF", i + k
        if raw[i + k] != word[k]:
            return (f"invalid character {_quote_char(raw[i + k])} in literal {word.decode()} "
                    f"(expecting {_quote_char(word[k])})"), i + k
    return None, i + len(word)


def _quote_char(c: int) -> str:
    """encoding/json's ``quoteChar``: the byte as a rune (Latin-1), quoted by ``strconv.Quote``."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    return "'" + go_quote(chr(c))[1:-1] + "'"
