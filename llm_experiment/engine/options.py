"""Request ``options`` and ``keep_alive``: Ollama's names, types, defaults, bounds and error messages.

Types and conversions follow ``api.Options.FromMap`` and ``api.Duration.UnmarshalJSON`` (api/types.go);
the bounds follow the code that runs a request: server/sched.go, llm/server.go, llm/llama_server.go
and the llama.cpp sampler that llama-server uses.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from ..protocol import OPTION_TYPES

_log = logging.getLogger(__name__)

_TYPE_WORDS = {"int": "integer", "float32": "float32", "bool": "boolean", "[]string": "array"}
# Names api.Options no longer has (FromMap only logs "invalid option provided" and ignores them),
# and one it gained; protocol.OPTION_TYPES still lists the former.
_NOT_IN_GO = frozenset({"mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline", "low_vram",
                        "f16_kv", "logits_all", "vocab_only", "use_mlock", "numa"})
_GO_OPTIONS = {name: kind for name, kind in {**OPTION_TYPES, "draft_num_predict": "int"}.items()
               if name not in _NOT_IN_GO}
_MIN_INT64 = -(2**63)


@dataclass
class Options:
    """The options that shape one generation, with Ollama's defaults (``api.DefaultOptions``)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    seed: int = -1  # see normalize_seed: -1 (any value = 0xFFFFFFFF mod 2**32) draws a random seed
    num_predict: int = -1  # see bound_num_predict
    stop: list[str] = field(default_factory=list)
    repeat_penalty: float = 1.0  # Ollama's default since 2026-08 (it was 1.1)
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_ctx: int | None = None  # None: the server's default context size
    extra: dict[str, Any] = field(default_factory=dict)  # accepted, not used by this engine (num_keep is here)


class OptionError(ValueError):
    """An option of the wrong type or out of range; the message is Ollama's where it has one."""


class InvalidTokenError(ValueError):
    """A token id in a request's ``context`` that the model's vocabulary does not have (answer 400)."""


def parse_options(given: dict[str, Any] | None, defaults: dict[str, Any] | None = None) -> Options:
    """Check ``given`` (a request's ``options``) over ``defaults`` (a model's PARAMETERs), as FromMap does.

    Unknown names are ignored, as Ollama does (it only logs a warning). ``null`` keeps the default.
    Numbers for integer options are truncated like Go's ``int64(float64)`` (out of range: -2**63, as
    on amd64). Raises only :class:`OptionError`, with FromMap's messages, or, for a float32 option
    out of float32's range, the marshalling error Ollama answers when it sends the request on.
    """
    opts = Options()
    for source in (defaults, given):
        if source is None:
            continue
        if not isinstance(source, dict):
            raise OptionError("options must be a JSON object")
        for name, value in source.items():
            kind = _GO_OPTIONS.get(name)
            if kind is None or value is None:
                continue
            value = _convert(name, kind, value)
            if hasattr(opts, name):
                setattr(opts, name, value)
            else:
                opts.extra[name] = value
    return opts


def _convert(name: str, kind: str, value: Any) -> Any:
    wrong = OptionError(f'option "{name}" must be of type {_TYPE_WORDS[kind]}')
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong
    try:
        number = float(value)  # JSON numbers reach FromMap as float64
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if kind == "int":
        return _int64(number)
    try:
        single = struct.unpack("f", struct.pack("f", number))[0]
    except OverflowError:
        single = math.copysign(math.inf, number)
    if not math.isfinite(single):  # Go stores ±Inf in the float32 field; encoding it for the runner fails
        shown = "NaN" if math.isnan(single) else ("+Inf" if single > 0 else "-Inf")
        raise OptionError(f"failed to marshal completion request: json: unsupported value: {shown}")
    return number


def _int64(number: float) -> int:
    """Go's ``int64(f)`` on amd64: truncation toward zero; NaN or out of range gives -2**63."""
    if math.isnan(number) or not -(2.0**63) <= number < 2.0**63:
        return _MIN_INT64
    return int(number)


# bounds applied when a request runs ----------------------------------------------------------


def clamp_num_ctx(num_ctx: int, train_ctx: int | None, *, vision: bool = False) -> int:
    """The context size Ollama loads a model with.

    server/sched.go ``getRunner``: below 4 becomes 4, and a vision model gets at least 2048;
    llm/server.go ``NewLlamaServer``: above the model's training context (``train_ctx`` > 0) becomes
    that, logging ``requested context size too large for model`` with num_ctx and n_ctx_train.
    """
    num_ctx = max(num_ctx, 4)
    if vision:
        num_ctx = max(num_ctx, 2048)
    if train_ctx is not None and 0 < train_ctx < num_ctx:
        _log.warning("requested context size too large for model num_ctx=%d n_ctx_train=%d", num_ctx, train_ctx)
        num_ctx = train_ctx
    return num_ctx


OPEN_ENDED_CONTEXT_MULTIPLIER = 10  # llm/llama_server.go openEndedGenerationContextMultiplier


def bound_num_predict(num_predict: int, num_ctx: int) -> int:
    """The most tokens to generate: llm/llama_server.go ``boundedNumPredict``.

    Negative ("until a stop") and anything above 10 * num_ctx become 10 * num_ctx. Ollama keeps 0,
    but then leaves ``n_predict`` out of its llama-server request, which also means no limit: here 0
    becomes 10 * num_ctx too. Without a context shift, generation ends anyway when the context is full.
    """
    if num_ctx <= 0:
        return num_predict
    limit = OPEN_ENDED_CONTEXT_MULTIPLIER * num_ctx
    return limit if num_predict <= 0 or num_predict > limit else num_predict


def clamp_repeat_last_n(repeat_last_n: int, num_ctx: int) -> int:
    """How many recent tokens the repeat penalties look at, as llama-server takes ``repeat_last_n``.

    tools/server ``params_from_json_cmpl``: below -1 is an error (Ollama relays llama-server's 400
    ``Error: repeat_last_n must be >= -1``), -1 means the context size, 0 disables the penalties.
    Larger than the context is bounded to it: no more tokens than that can precede a sampled one.
    """
    if repeat_last_n < -1:
        raise OptionError("repeat_last_n must be >= -1")
    if repeat_last_n == -1:
        return num_ctx
    return min(repeat_last_n, num_ctx)


def clamp_top_k(top_k: int, n_vocab: int) -> int:
    """llama.cpp's top-k sampler: 0 or less keeps every token (returned as 0); more than the vocabulary is all."""
    return 0 if top_k <= 0 else min(top_k, n_vocab)


def normalize_seed(seed: int) -> int | None:
    """The sampler's seed: Ollama passes ``uint32(seed)``; 0xFFFFFFFF (so -1) is LLAMA_DEFAULT_SEED.

    Returns the 32-bit seed, or None for "draw a random one" (llama.cpp's ``llama_sampler_init_dist``).
    """
    seed &= 0xFFFFFFFF
    return None if seed == 0xFFFFFFFF else seed


def clamp_num_keep(num_keep: int, n_prompt: int, num_ctx: int, *, adds_bos: bool) -> int:
    """Prompt tokens kept when a prompt is cut to fit: llm/llama_server.go ``completionPromptForRequest``.

    Negative keeps the whole prompt; one more for the BOS token the tokenizer adds; at most num_ctx - 1.
    """
    if num_keep < 0:
        num_keep = n_prompt
    if adds_bos:
        num_keep += 1
    return max(0, min(num_keep, num_ctx - 1))


def check_context_tokens(tokens: list[int], n_vocab: int) -> None:
    """Refuse a ``context`` with ids outside ``0..n_vocab-1`` (:class:`InvalidTokenError`, for a 400).

    Ollama hands ``context`` to llama-server's /detokenize, which fails on such an id; Ollama then
    answers 500 ``detokenize error: ...`` with llama-server's body. This message says what is wrong.
    """
    if not tokens or (0 <= min(tokens) and max(tokens) < n_vocab):
        return
    bad = next(token for token in tokens if not 0 <= token < n_vocab)
    raise InvalidTokenError(f"context contains token id {bad}, outside the model's vocabulary (0..{n_vocab - 1})")


# keep_alive ----------------------------------------------------------------------------------

DEFAULT_KEEP_ALIVE = 300.0  # seconds: Ollama's 5m
FOREVER = math.inf
_MAX_DURATION = "2562047h47m16.854775807s"  # time.Duration(math.MaxInt64)


class DurationError(ValueError):
    """A ``keep_alive`` that is neither a number nor a Go duration string, or too long for Go."""


def parse_keep_alive(value: Any, *, env: bool = False) -> float | None:
    """Seconds the model stays loaded after a request: None (not given), ``inf`` (forever), 0 or more.

    None means "use the default": test it with ``is None``, since 0.0 means "unload at once".
    Numbers are seconds and strings Go durations (``"5m"``, ``"1h30m"``), as ``api.Duration`` reads
    them; anything negative is forever. A duration over Go's ``time.Duration`` (about 292 years) is a
    :class:`DurationError`, as is every other bad value (messages are Go's where Go has one).

    With ``env=True``, ``value`` is ``OLLAMA_KEEP_ALIVE`` as envconfig.KeepAlive reads it: trimmed of
    spaces and quotes, a duration or else an integer number of seconds; unset or empty gives None.
    """
    if env:
        return _env_keep_alive(value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        return _seconds(value)
    if isinstance(value, str):
        return _from_ns(parse_go_duration(value))
    if isinstance(value, list):
        go_type = "[]interface {}"
    elif isinstance(value, dict):
        go_type = "map[string]interface {}"
    else:
        go_type = type(value).__name__
    raise DurationError(f"Unsupported type: '{go_type}'")


def _seconds(value: float) -> float:
    """``time.Duration(t * float64(time.Second))``, refusing what overflows int64 nanoseconds."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        raise DurationError("keep_alive must be a number of seconds or a duration string")
    if number < 0:
        return FOREVER
    ns = number * 1e9
    if ns >= 2.0**63:  # Go would wrap it (to a negative duration on amd64)
        shown = str(value) if isinstance(value, int) and abs(value) < 10**30 else repr(number)
        raise DurationError(f"keep_alive {shown} is too long: the longest is {_MAX_DURATION} (about 292 years); "
                            "use a negative value to keep the model loaded forever")
    return int(ns) / 1e9


def _from_ns(ns: int) -> float:
    return FOREVER if ns < 0 else ns / 1e9


_GO_INT = re.compile(r"[+-]?[0-9]+")


def _env_keep_alive(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip().strip("\"'")
    if not text:
        return None
    try:
        return _from_ns(parse_go_duration(text))
    except DurationError:
        if not _GO_INT.fullmatch(text):
            raise
    seconds = int(text)  # strconv.ParseInt, then seconds
    if not _MIN_INT64 <= seconds < 2**63:
        raise DurationError(f'strconv.ParseInt: parsing "{text}": value out of range') from None
    if seconds < 0:
        return FOREVER
    if seconds * 10**9 >= 2**63:
        raise DurationError(f"OLLAMA_KEEP_ALIVE {text} is too long: the longest is {_MAX_DURATION}")
    return float(seconds)


_UNITS = {b"ns": 1, b"us": 10**3, "µs".encode(): 10**3, "μs".encode(): 10**3, b"ms": 10**6, b"s": 10**9,
          b"m": 60 * 10**9, b"h": 3600 * 10**9}
_COMPONENT = re.compile(rb"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_CUTOFF = 1 << 63


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``: nanoseconds, or :class:`DurationError` with Go's message."""
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: Go's string would hold U+FFFD there
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        raw = text.encode()
    invalid = DurationError(f"time: invalid duration {_time_quote(text)}")
    negative = raw[:1] == b"-"
    body = raw[1:] if raw[:1] in (b"-", b"+") else raw
    if body == b"0":
        return 0
    if not body:
        raise invalid
    total, i = 0, 0
    while i < len(body):
        if body[i] != ord(".") and not ord("0") <= body[i] <= ord("9"):
            raise invalid
        match = _COMPONENT.match(body, i)
        whole, fraction, unit_name = match.groups()
        i = match.end()
        if not whole and not fraction:  # no digits at all, as in ".s"
            raise invalid
        digits = whole.lstrip(b"0")
        if len(digits) > 19 or int(digits or b"0") > _CUTOFF:  # leadingInt overflows
            raise invalid
        value = int(digits or b"0")
        if not unit_name:
            raise DurationError(f"time: missing unit in duration {_time_quote(text)}")
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise DurationError(f"time: unknown unit {_time_quote(unit_name.decode())} in duration "
                                f"{_time_quote(text)}")
        if value > _CUTOFF // unit:
            raise invalid
        value *= unit
        if fraction:
            numerator, scale = _leading_fraction(fraction)
            if numerator > 0:
                value += int(float(numerator) * (float(unit) / scale))
                if value > _CUTOFF:
                    raise invalid
        total += value
        if total > _CUTOFF:
            raise invalid
    if negative:
        return -total
    if total > _CUTOFF - 1:
        raise invalid
    return total


def _leading_fraction(digits: bytes) -> tuple[int, float]:
    """Go's ``leadingFraction``: the digits' value and 10**count, until more would overflow."""
    value, scale = 0, 1.0
    for digit in digits:
        if value > (_CUTOFF - 1) // 10:
            break
        following = value * 10 + digit - ord("0")
        if following > _CUTOFF:
            break
        value, scale = following, scale * 10
        if math.isinf(scale):  # then the fraction adds nothing, whatever follows
            break
    return value, scale


def _time_quote(text: str) -> str:
    """The time package's ``quote``: bytes outside printable ASCII as ``\\xNN``."""
    out = ['"']
    for byte in text.encode("utf-8", "replace"):
        if byte >= 0x80 or byte < 0x20:
            out.append(f"\\x{byte:02x}")
        elif byte in b'"\\':
            out.append("\\" + chr(byte))
        else:
            out.append(chr(byte))
    out.append('"')
    return "".join(out)
