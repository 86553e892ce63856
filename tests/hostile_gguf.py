"""Hostile GGUF files made from the bundled model's metadata (for the hostile tests and bench/robustness.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from llm_experiment.engine.models import bundled_gguf

_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
KV = tuple[str, int, bytes]  # key, GGUF value type, the value's bytes as stored


def gguf_string(data: bytes) -> bytes:
    """A GGUF string: its length, then its bytes."""
    return struct.pack("<Q", len(data)) + data


def read_metadata(path: Path) -> list[KV]:
    """The metadata of a (trusted) GGUF file, each value kept as its raw bytes."""
    data = path.read_bytes()[: 8 << 20]  # SmolLM2's metadata is 1.7 MB
    n_kv, pos = struct.unpack_from("<Q", data, 16)[0], 24

    def skip(kind: int, pos: int) -> int:
        if kind == _STRING:
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        if kind == _ARRAY:
            element, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if element in _SCALAR_BYTES:
                return pos + n * _SCALAR_BYTES[element]
            for _ in range(n):
                pos = skip(element, pos)
            return pos
        return pos + _SCALAR_BYTES[kind]

    kvs = []
    for _ in range(n_kv):
        size = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8: pos + 8 + size].decode()
        kind = struct.unpack_from("<I", data, pos + 8 + size)[0]
        start = pos + 12 + size
        pos = skip(kind, start)
        kvs.append((key, kind, data[start:pos]))
    return kvs


def bundled_metadata() -> list[KV]:
    """The metadata of the bundled model's GGUF file."""
    return read_metadata(bundled_gguf())


def write_gguf(kvs: list[KV]) -> bytes:
    """A GGUF v3 file with this metadata and no tensors (llama.cpp can load its vocabulary, not run it)."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, 0, len(kvs))]
    for key, kind, raw in kvs:
        parts += [gguf_string(key.encode()), struct.pack("<I", kind), raw]
    return b"".join(parts)


def replace(kvs: list[KV], key: str, edit: Callable[[bytes], bytes]) -> list[KV]:
    """The metadata with the value of ``key`` (which must be there) passed through ``edit``."""
    assert key in [k for k, _, _ in kvs]
    return [(k, kind, edit(raw) if k == key else raw) for k, kind, raw in kvs]


def _with_bad_token(raw: bytes) -> bytes:
    """The token list with token 300 made of bytes that are not UTF-8."""
    _, n = struct.unpack_from("<IQ", raw)
    pos, tokens = 12, []
    for _ in range(n):
        size = struct.unpack_from("<Q", raw, pos)[0]
        tokens.append(raw[pos + 8: pos + 8 + size])
        pos += 8 + size
    tokens[300] = b"\xff\xfe\x80"
    return struct.pack("<IQ", _STRING, n) + b"".join(gguf_string(t) for t in tokens)


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def renamed(kvs: list[KV], name: str) -> list[KV]:
    """The same metadata under another general.name: another file, another digest."""
    return replace(kvs, "general.name", lambda _: gguf_string(name.encode()))


HOSTILE_GGUFS: dict[str, tuple[Callable[[list[KV]], bytes], str]] = {
    # name: (the file, a regular expression its refusal must match)
    "nan": (lambda kvs: write_gguf(replace(kvs, "llama.attention.layer_norm_rms_epsilon",
                                           lambda _: struct.pack("<f", float("nan")))), "NaN"),
    "bad-token": (lambda kvs: write_gguf(replace(kvs, "tokenizer.ggml.tokens", _with_bad_token)), "UTF-8"),
    "truncated": (lambda kvs: _first_half(write_gguf(kvs)), "file ends|more than the file holds"),
    # passes the Python checks; llama.cpp itself refuses 10 token types for 49,152 tokens
    "short-token-types": (lambda kvs: write_gguf(replace(kvs, "tokenizer.ggml.token_type",
                                                         lambda raw: struct.pack("<IQ", 5, 10) + raw[12:52])),
                          "llama.cpp"),
}
