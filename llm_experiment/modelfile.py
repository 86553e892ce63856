'''Modelfiles: read one, check it, write it back, and turn it into a ``POST /api/create`` body.

A Modelfile is Ollama's recipe for a new model: a base model plus the settings baked into it::

    FROM smollm2:135m
    PARAMETER temperature 0.2
    PARAMETER stop "<|im_end|>"
    SYSTEM """You answer in one sentence."""

``parse`` reads the text the way Ollama's own parser (``parser/parser.go``) does, character by
character, so a file Ollama accepts gives the same values here and a file it rejects fails with
Ollama's words. ``render`` writes a ``Modelfile`` back as text. ``to_create_request`` builds the JSON
that ``ollama create`` sends: the server no longer reads Modelfile text, the client parses it.
'''

from __future__ import annotations

import math
import re
import string
import struct
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from llm_experiment.protocol import OPTION_TYPES

__all__ = ["Modelfile", "ModelfileError", "parse", "render", "to_create_request"]

INSTRUCTIONS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
                "message", "requires")
ROLES = ("system", "user", "assistant")

# Ollama's error texts, word for word, so a student can search for them.
NO_FROM = "no FROM line"
BAD_INSTRUCTION = ('command must be one of "from", "license", "template", "system", "adapter", "draft", "renderer", '
                   '"parser", "parameter", "message", or "requires"')
BAD_REQUIRES = "requires must be a valid semver (e.g. 0.14.0)"
BAD_ROLE = 'message role must be one of "system", "user", or "assistant"'
EOF = "unexpected EOF"


@dataclass
class Modelfile:
    """Everything a Modelfile says, with parameter values already converted to their types."""

    from_: str  # FROM: a model name or a path to a .gguf
    parameters: dict[str, Any] = field(default_factory=dict)  # "stop" is a list: each stop line adds one
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)  # LICENSE may repeat
    messages: list[dict[str, str]] = field(default_factory=list)  # MESSAGE role content
    draft: str | None = None  # DRAFT: a draft model's GGUF on your disk, for speculative decoding
    renderer: str | None = None  # RENDERER and PARSER: which of Ollama's built-in prompt renderers and output
    parser: str | None = None  # parsers (tool calls, thinking) the model uses instead of a TEMPLATE
    requires: str | None = None  # REQUIRES: the oldest Ollama version the model works with, e.g. "0.14.0"


class ModelfileError(ValueError):
    """A Modelfile Ollama would refuse. ``message`` is Ollama's text, ``line`` where it went wrong."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line  # 1-based line of the offending instruction; None when no line is to blame

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


# Reading -------------------------------------------------------------------------------------

SPACE, NEWLINE = " \t", "\r\n"  # Ollama's only blanks; other Unicode spaces are not separators


@dataclass
class _Instruction:
    """One instruction as written, before its value is checked."""

    line: int  # where it starts
    keyword: str  # lower case: "from", "parameter", ...
    name: str  # the parameter name or the message role; "" for the other keywords
    value: str


def _read(text: str) -> list[_Instruction]:
    """Split ``text`` into instructions, one character at a time, as Ollama's state machine does.

    The states: at the ``start`` of a line, in a ``comment``, in the ``keyword``, in the ``name``
    after PARAMETER or MESSAGE, and in the ``value``, which runs until a line break at which the
    text read so far is complete (unquoted, or with its closing quote).
    """
    found: list[_Instruction] = []
    state, buffer, keyword, name = "start", "", "", ""
    line = start = 1
    previous = ""
    for char in text.removeprefix("\ufeff"):  # Go's decoder drops a byte order mark
        # Ollama counts "\r" and "\n" separately, so a Windows file's lines count double there;
        # here "\r\n" is one line break, as an editor shows it.
        if char == "\r" or (char == "\n" and previous != "\r"):
            line += 1
        previous = char

        if state == "start":
            if char == "#":  # a comment only where an instruction could begin
                state = "comment"
            elif char not in SPACE + NEWLINE:
                state, start, buffer = "keyword", line, _printable(char)
        elif state == "comment":
            if char in NEWLINE:
                state = "start"
        elif state == "keyword":
            if char in string.ascii_letters:
                buffer += char
            elif char in SPACE and buffer.lower() in INSTRUCTIONS:
                keyword, name, buffer = buffer.lower(), "", ""
                state = "name" if keyword in ("parameter", "message") else "value"
            else:
                raise ModelfileError(BAD_INSTRUCTION, start)
        elif state == "name":
            # a parameter name is letters, digits and "_"; a role is letters only
            if char in string.ascii_letters or (keyword == "parameter" and (char in string.digits or char == "_")):
                buffer += char
            elif char in SPACE:
                if keyword == "message" and buffer not in ROLES:
                    raise ModelfileError(BAD_ROLE, start)
                state, name, buffer = "value", buffer, ""
            else:  # e.g. "PARAMETER stop" with no value: Ollama's words, with what it had read
                raise ModelfileError(f"{EOF}: {buffer}", start)
        elif char in NEWLINE:  # state == "value": does the value end here?
            value = _unquote(buffer)
            if value is None:  # inside quotes: the line break is part of the value
                buffer += char
            else:
                found.append(_Instruction(start, keyword, name, value))
                state, buffer = "start", ""
        else:
            buffer += char if char in SPACE else _printable(char)

    if state == "value":  # the end of the text ends the last value, unless a quote is still open
        value = _unquote(buffer)
        if value is None:
            raise ModelfileError(EOF, start)
        found.append(_Instruction(start, keyword, name, value))
    elif state in ("keyword", "name"):  # the text stopped in the middle of an instruction
        raise ModelfileError(EOF, start)
    return found


def _printable(char: str) -> str:
    """Ollama silently drops control characters, zero-width characters and non-ASCII spaces."""
    # Python's isprintable() and Go's strconv.IsPrint draw the same line: letters, marks, numbers,
    # punctuation, symbols, and the ASCII space.
    return char if char.isprintable() else ""


def _unquote(text: str) -> str | None:
    """The value in ``text`` without its quotes, or None while a quote is still open."""
    text = text.strip(SPACE + NEWLINE)
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


def parse(text: str) -> Modelfile:
    """Read Modelfile ``text``; raise ``ModelfileError`` with Ollama's message if Ollama would refuse it.

    Errors come in Ollama's order: the first mistake in the text, then a missing FROM, then the
    first parameter whose name or value is wrong.
    """
    instructions = _read(text)
    if not any(instruction.keyword == "from" for instruction in instructions):
        raise ModelfileError(NO_FROM)
    mf = Modelfile(from_="")
    for instruction in instructions:
        value = instruction.value
        match instruction.keyword:
            case "from":  # a later FROM, TEMPLATE or SYSTEM replaces an earlier one, as in Ollama
                mf.from_ = value
            case "template":
                mf.template = value
            case "system":
                mf.system = value
            case "adapter":  # all kept here; Ollama's client sends only the last one
                mf.adapters.append(value)
            case "draft":
                mf.draft = value
            case "renderer":
                mf.renderer = value
            case "parser":
                mf.parser = value
            case "requires":  # Ollama checks it as a semantic version, adding the "v" Go's semver wants
                if not _SEMVER.fullmatch(value if value.startswith("v") else "v" + value):
                    raise ModelfileError(BAD_REQUIRES, instruction.line)
                mf.requires = value.removeprefix("v")
            case "license":
                mf.license.append(value)
            case "message":
                mf.messages.append({"role": instruction.name, "content": value})
            case _:  # parameter
                name = instruction.name
                converted = _parameter(name, value, instruction.line)
                if OPTION_TYPES[name] == "[]string":  # each stop line adds one; other parameters: the last wins
                    mf.parameters.setdefault(name, []).append(converted)
                else:
                    mf.parameters[name] = converted
    return mf


# golang.org/x/mod/semver's IsValid: "v1", "v1.2", "v1.2.3", the last with a pre-release and build suffix.
_NUMBER = r"(?:0|[1-9][0-9]*)"
_SEMVER = re.compile(
    rf"v{_NUMBER}(?:\.{_NUMBER}(?:\.{_NUMBER}"
    rf"(?:-(?:{_NUMBER}|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:{_NUMBER}|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?)?)?")


# Parameter values, converted as Go's strconv does in Ollama's api.FormatParams ----------------

_DIGITS = r"[0-9](?:_?[0-9])*"  # Go allows one "_" between digits in a float
_HEX = r"[0-9a-fA-F](?:_?[0-9a-fA-F])*"
_GO_FLOAT = re.compile(
    rf"[+-]?(?:(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?"  # 1  1.  .5  1.5e-3
    rf"|0[xX](?:_?{_HEX}(?:\.(?:{_HEX})?)?|\.{_HEX})[pP][+-]?{_DIGITS})"  # 0x1.8p3
)
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _parameter(name: str, text: str, line: int) -> Any:
    """``text`` as the type Ollama gives parameter ``name``; Ollama's message when it can't be."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise ModelfileError(f"unknown parameter '{name}'", line)
    try:
        if kind == "int":
            return _go_int(text)
        if kind == "float32":
            return _go_float32(text)
        if kind == "bool":
            return _GO_BOOL[text]
        return text  # "[]string": one stop sequence
    except (ValueError, KeyError, OverflowError):  # OverflowError: a hex float too big even for Python
        # Go prints the value as a one-element list: invalid float value [hot]
        word = {"float32": "float"}.get(kind, kind)
        raise ModelfileError(f"invalid {word} value [{text}]", line) from None


def _go_int(text: str) -> int:
    """Go's ParseInt(text, 10, 64): ASCII digits only, and it must fit in 64 bits."""
    if not _GO_INT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
        raise ValueError(text)
    return int(text)


def _go_float32(text: str) -> float:
    """Go's ParseFloat(text, 32), then the number as Go's JSON writes that float32.

    Ollama sends ``temperature 0.7`` as the float32 nearest 0.7, written as ``0.7``; so it is
    0.7 here too, not 0.699999988079071. NaN and infinities are refused: Ollama parses them but
    then cannot send them (JSON has no such numbers).
    """
    if not _GO_FLOAT.fullmatch(text):
        raise ValueError(text)
    digits = text.replace("_", "")
    number = float.fromhex(digits) if "x" in digits.lower() else float(digits)
    nearest = _as_float32(number)
    if not math.isfinite(nearest):  # too big for a float32: Go's ErrRange
        raise ValueError(text)
    return _shortest(nearest)


def _shortest(f32: float) -> float:
    """The decimal with the fewest digits that still rounds to the float32 ``f32``, as Go writes it.

    At each length only the two decimals just below and just above ``f32`` can fit; when both
    do, Go takes the nearer, and on a tie the one ending in an even digit.
    """
    exact = Decimal(f32)
    for digits in range(1, 10):  # 9 digits always suffice for a float32
        around = [Context(prec=digits, rounding=rounding).plus(exact) for rounding in (ROUND_FLOOR, ROUND_CEILING)]
        fitting = [decimal for decimal in around if _as_float32(float(decimal)) == f32]
        if len(fitting) == 2:
            return float(Context(prec=digits, rounding=ROUND_HALF_EVEN).plus(exact))
        if fitting:
            return float(fitting[0])
    return f32


def _as_float32(number: float) -> float:
    """The float32 nearest ``number``, as a Python float; infinite beyond float32's range."""
    try:
        return struct.unpack("<f", struct.pack("<f", number))[0]
    except OverflowError:
        return math.copysign(math.inf, number)


# Writing -------------------------------------------------------------------------------------

def render(mf: Modelfile) -> str:
    """Write ``mf`` as Modelfile text; ``parse`` (and Ollama) read it back as the same Modelfile."""
    lines = [f"FROM {_quote(mf.from_)}"]
    lines += [f"ADAPTER {_quote(adapter)}" for adapter in mf.adapters]
    lines += [f"{keyword.upper()} {_quote(value)}" for keyword, value in
              (("draft", mf.draft), ("renderer", mf.renderer), ("parser", mf.parser), ("requires", mf.requires))
              if value is not None]
    if mf.template is not None:
        lines.append(f"TEMPLATE {_quote(mf.template)}")
    if mf.system is not None:
        lines.append(f"SYSTEM {_quote(mf.system)}")
    for name, value in mf.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            lines.append(f"PARAMETER {name} {_quote(text)}")
    lines += [f"MESSAGE {message['role']} {_quote(message['content'])}" for message in mf.messages]
    lines += [f"LICENSE {_quote(text)}" for text in mf.license]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    '''``value`` bare if it can be, else in "..." or """...""", whichever reads back unchanged.

    A value ends at the first line break where the text so far looks complete, so a quote just
    before a line break inside the value could end it early. Rather than predict that, try each
    form with the parser itself and keep the first that gives ``value`` back.
    '''
    single, triple = f'"{value}"', f'"""{value}"""'
    forms = [value] if value else []  # an empty bare value would be invisible
    forms += [triple, single] if '"' in value or "\n" in value else [single, triple]
    for form in forms:
        try:
            if [instruction.value for instruction in _read(f"SYSTEM {form}\n")] == [value]:
                return form
        except ModelfileError:
            pass
    raise ValueError(f"{value!r} cannot be written in a Modelfile: Ollama's parser would change it")


# Sending -------------------------------------------------------------------------------------

def to_create_request(mf: Modelfile, model: str) -> dict[str, Any]:
    """The JSON body for ``POST /api/create`` that makes ``model`` from ``mf``, empty fields left out.

    It has the fields ``ollama create`` sends: ``license`` is a list, ``parameters`` an object
    (``stop`` a list of strings). Files on your disk (a .gguf in FROM, an ADAPTER) must first be
    uploaded with ``POST /api/blobs/sha256:<digest>`` and named in ``files``/``adapters``; this
    function does not read files, so it refuses them rather than send a path the server can't see.
    """
    # An adapter and a draft model are always files.
    local = ([mf.from_] if _looks_like_file(mf.from_) else []) + mf.adapters + ([mf.draft] if mf.draft else [])
    if local:
        raise ValueError(f"{local[0]!r} is a local file: upload it with POST /api/blobs/sha256:<digest> and send "
                         "its digest in 'files' or 'adapters', or run `ollama create -f Modelfile`")
    optional: dict[str, Any] = {
        "from": mf.from_,
        "system": mf.system,
        "template": mf.template,
        "parameters": {name: list(v) if isinstance(v, list) else v for name, v in mf.parameters.items()},
        "messages": [{"role": m["role"], "content": m["content"]} for m in mf.messages],
        "license": list(mf.license),
        "renderer": mf.renderer,
        "parser": mf.parser,
        "requires": mf.requires,
    }
    # Go's omitempty: "", [] and {} are not sent, so SYSTEM "" keeps the base model's system prompt.
    return {"model": model} | {key: value for key, value in optional.items() if value}


def _looks_like_file(name: str) -> bool:
    """A path rather than a model name: model names never start with "/", "." or "~"."""
    return name.startswith(("/", ".", "~", "\\")) or name.lower().endswith((".gguf", ".bin", ".safetensors"))
