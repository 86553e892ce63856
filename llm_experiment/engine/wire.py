"""How the engine writes JSON, timestamps and errors exactly as Ollama (a Go program) does."""

from __future__ import annotations

import json
import json.encoder
import time
from decimal import Decimal
from typing import Any

from starlette.responses import Response

# Go's encoding/json escapes these inside strings; the parsed value is the same, the bytes match Ollama's.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(obj: Any) -> str:
    """Compact JSON as Go's ``json.Marshal`` writes it (escapes, and floats as in :func:`go_float`)."""
    if not _has_float(obj):  # the common case: the C encoder
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).translate(_GO_ESCAPES)
    encoder = json.encoder.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    chunks = json.encoder._make_iterencode(  # type: ignore[attr-defined] - the pure-Python encoder takes a float writer
        {}, encoder.default, json.encoder.py_encode_basestring, None, go_float, ":", ",", False, False, True)
    return "".join(chunks(obj, 0)).translate(_GO_ESCAPES)


def go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it: shortest digits, plain notation unless the magnitude
    is below 1e-6 or at least 1e21 (``100000``, ``0.00001``, ``1e-7``), where Python writes
    ``100000.0``, ``1e-05``, ``1e-07``."""
    return _go_notation(repr(value))  # shortest round-trip digits, as Go's strconv


def go_float32_array(values: Any) -> str:
    """A JSON array of float32 values as Go writes a ``[]float32``: each the shortest decimal that
    reads back as the same float32 (``0.010071031``, not the float64 ``0.010071031483888626``), in
    Go's notation (see :func:`go_float`). ``values`` is a 1-D numpy float32 array; must be finite."""
    parts = [str(x) for x in values]  # numpy prints a float32 with its own shortest round-trip digits
    for i, text in enumerate(parts):
        if "e" in text or text.endswith(".0") or text[-1] in "nf":  # exponent form, "1.0", "nan"/"inf": rare
            parts[i] = _go_notation(text)
    return "[" + ",".join(parts) + "]"


def _go_notation(text: str) -> str:
    """Shortest digits as Python or numpy print them (exponent form below 1e-4 and from 1e16), in Go's notation."""
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"json: unsupported value: {text}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):  # Go writes 1e-7 where Python writes 1e-07
        mantissa, _, exponent = text.partition("e")
        return f"{mantissa.removesuffix('.0')}e{int(exponent):+03d}".replace("e+0", "e+").replace("e-0", "e-")
    if "e" in text:  # exponent notation inside Go's plain range
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def _has_float(obj: Any) -> bool:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def ndjson_line(obj: Any) -> bytes:
    """One line of an NDJSON stream."""
    return (dumps(obj) + "\n").encode()


def timestamp(ns: int | None = None) -> str:
    """An RFC 3339 UTC timestamp with nanoseconds, trailing zeros trimmed, like Go's ``RFC3339Nano``."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{frac:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


class JSONResponse(Response):
    """``application/json; charset=utf-8`` with Go's encoding, as Ollama answers."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def error(status: int, message: str) -> JSONResponse:
    """Ollama's error shape: ``{"error": "<message>"}``."""
    return JSONResponse({"error": message}, status_code=status)


class APIError(Exception):
    """Raised anywhere in a handler; turned into :func:`error` by the app."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def local_time(ns: int) -> str:
    """A local-time RFC 3339 timestamp with offset (``Z`` for UTC), as Go writes ``modified_at``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    offset = time.localtime(seconds).tm_gmtoff if seconds < 2**31 else time.localtime().tm_gmtoff
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds + offset))
    fraction = f"{frac:09d}".rstrip("0")
    if fraction:
        text += "." + fraction
    if offset == 0:
        return text + "Z"
    sign = "+" if offset > 0 else "-"
    return f"{text}{sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}"


_QUOTE_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (and ``%q``): printable runes as they are, the rest escaped."""
    if s.isascii() and s.isprintable():
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    out = ['"']
    for c in s:
        code = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif code in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[code])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
