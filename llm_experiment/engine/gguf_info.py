"""Reading and checking GGUF model files safely, without llama.cpp in the calling process.

Clients may upload any file as a model, so the server must never hand an unchecked file to
llama.cpp in its own process: a hostile file can make llama.cpp abort, crash or hang. This module

* reads a GGUF file's metadata and tensor table in pure Python (:func:`read_gguf`), checking
  every length and count against the bytes left in the file before it reads or allocates
  anything, with limits on sizes and counts, and rejecting what llama.cpp would choke on:
  invalid UTF-8, NaN or infinite floats, unknown types, tensors outside the file;
* tries llama.cpp's vocabulary load on a file in a short-lived child process, with a timeout and
  a memory limit (:func:`validate_in_subprocess`), so that a crash there is an error here.

Run as ``python -m llm_experiment.engine.gguf_info PATH`` it is that child: it prints one JSON
object (``{"info": ...}`` or ``{"error": ...}``) on standard output.
"""

from __future__ import annotations

import array
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

# --- limits (far above any real model's; a file past them is rejected) ---
MAX_KEYS = 1 << 16  # metadata key/value pairs (a real model has 20 to 60)
MAX_KEY_LENGTH = 1 << 10  # bytes in a metadata key
MAX_STRING_LENGTH = 16 << 20  # bytes in a string value (Ollama's fs/gguf MaxStringLength); chat templates are ~10 KB
MAX_ARRAY_LENGTH = 1 << 22  # elements in an array value (4 Mi: vocabularies and merge lists are < 1 Mi)
MAX_TENSORS = 1 << 16  # tensors (a 405B model has ~1,100)
MAX_DIMS = 4  # dimensions of a tensor (GGML_MAX_DIMS)
MAX_TENSOR_NAME = 63  # bytes in a tensor name (GGML_MAX_NAME is 64, with the terminating NUL)
MAX_HEADER_BYTES = 128 << 20  # metadata plus tensor table (SmolLM2's is 1.7 MB, large vocabularies ~10 MB)
SUBPROCESS_MEMORY = 2 << 30  # address space for the llama.cpp trial load (RLIMIT_AS; SmolLM2's needs 290 MB)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types: code -> (name, struct format). 8 is a string, 9 an array.
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("uint8", "B"), 1: ("int8", "b"), 2: ("uint16", "H"), 3: ("int16", "h"), 4: ("uint32", "I"),
    5: ("int32", "i"), 6: ("float32", "f"), 7: ("bool", "B"), 10: ("uint64", "Q"), 11: ("int64", "q"),
    12: ("float64", "d"),
}
_STRING, _ARRAY, _UINT32 = 8, 9, 4

# ggml tensor types (ggml.h ggml_type): code -> (name, elements per block, bytes per block).
# Codes 4, 5, 31-33 and 36-38 were removed from ggml and are rejected. Same sizes as gguf-py's
# GGML_QUANT_SIZES, except Q8_1, which is 36 bytes in ggml (sizeof(block_q8_1)) and never stored in files.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# general.file_type (llama.h llama_ftype) -> the quantization name Ollama shows (fs/ggml/type.go FileType.String).
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}

_CHUNK = 1 << 20
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_INT64_MAX = (1 << 63) - 1


class GGUFError(ValueError):
    """The file is not a GGUF file this server accepts; the message says why."""


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file says about itself."""

    version: int
    metadata: dict[str, Any]  # arrays are None (non-empty) or [] unless read with arrays=True
    tensors: list[dict[str, Any]]  # {"name", "type", "shape"} in file order
    parameter_count: int  # sum of the tensors' element counts, as Ollama computes general.parameter_count
    alignment: int
    data_offset: int  # where the tensor data starts

    @property
    def architecture(self) -> str | None:
        """``general.architecture``, e.g. ``"llama"``."""
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) and value else None

    @property
    def context_length(self) -> int | None:
        """``<architecture>.context_length``: the context the model was trained for."""
        value = self.metadata.get(f"{self.architecture}.context_length")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def capabilities(self) -> list[str]:
        """``["embedding"]`` if the file names a pooling type (a sentence-embedding model), else
        ``["completion"]``: Ollama's rule (``Model.Capabilities`` in server/images.go)."""
        return ["embedding"] if f"{self.architecture}.pooling_type" in self.metadata else ["completion"]

    @property
    def quantization_level(self) -> str:
        """The name of ``general.file_type``, as Ollama shows it (``"unknown"`` if absent or 0, as in Ollama)."""
        value = self.metadata.get("general.file_type")
        # Ollama's KV.FileType() treats 0 (all F32) like a missing key.
        return FILE_TYPES.get(value, "unknown") if isinstance(value, int) and value > 0 else "unknown"

    def details(self) -> dict[str, Any]:
        """Ollama's ``details`` for a model made of this file (server/create.go)."""
        family = self.architecture or "unknown"  # Ollama's KV.Architecture() default
        return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                "parameter_size": human_number(self.parameter_count), "quantization_level": self.quantization_level}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``GGUFInfo(**d)`` makes it back."""
        return asdict(self)


def human_number(n: int) -> str:
    """``n`` as Ollama's format.HumanNumber writes it: 134515008 -> ``"134.52M"``, 7e9 -> ``"7B"``."""
    for size, suffix, decimals in ((1_000_000_000, "B", 1), (1_000_000, "M", 2)):
        if n >= size:
            number = n / size
            return f"{number:.0f}{suffix}" if number == math.floor(number) else f"{number:.{decimals}f}{suffix}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


class _Reader:
    """Reads a file front to back in chunks, never past its end or past MAX_HEADER_BYTES."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size
        self.buf = b""
        self.off = 0  # position in buf
        self.base = 0  # file offset of buf[0]

    @property
    def pos(self) -> int:
        return self.base + self.off

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        """Make ``n`` more bytes available in ``buf``, or say why they cannot be."""
        if n > self.size - self.pos:
            raise GGUFError(f"invalid GGUF: file ends inside {what} ({n} bytes needed at offset {self.pos}, "
                            f"{self.size - self.pos} left)")
        if self.pos + n > MAX_HEADER_BYTES:
            raise GGUFError(f"invalid GGUF: metadata and tensor table are larger than {MAX_HEADER_BYTES >> 20} MiB")
        if self.off + n > len(self.buf):
            rest = self.buf[self.off:]
            end = self.base + len(self.buf)  # the file offset read up to
            more = self.f.read(min(max(n - len(rest), _CHUNK), self.size - end, MAX_HEADER_BYTES - end))
            self.base, self.buf, self.off = self.pos, rest + more, 0
            if len(self.buf) < n:
                raise GGUFError("invalid GGUF: the file changed while it was read")

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self.need(st.size, what)
        value = st.unpack_from(self.buf, self.off)[0]
        self.off += st.size
        return value

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.buf[self.off:self.off + n]
        self.off += n
        return data

    def string(self, what: str, limit: int) -> str:
        n = self.unpack(_U64, f"the length of {what}")
        if n > limit:
            raise GGUFError(f"invalid GGUF: {what} is {n} bytes long, more than the {limit} allowed")
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"invalid GGUF: {what} is not valid UTF-8") from None

    def strings(self, n: int, key: str) -> list[str]:
        """The ``n`` strings of array ``key``: ``string()`` inlined for speed where ``buf`` holds them."""
        out: list[str] = []
        unpack = _U64.unpack_from
        for i in range(n):
            buf, off = self.buf, self.off
            if off + 8 <= len(buf):
                length = unpack(buf, off)[0]
                end = off + 8 + length
                if length <= MAX_STRING_LENGTH and end <= len(buf):  # buf holds only bytes of the file
                    try:
                        out.append(buf[off + 8:end].decode("utf-8"))
                    except UnicodeDecodeError:
                        raise GGUFError(f"invalid GGUF: metadata value {key}[{i}] is not valid UTF-8") from None
                    self.off = end
                    continue
            out.append(self.string(f"metadata value {key}[{i}]", MAX_STRING_LENGTH))  # with every check
        return out


def _float32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (as Go prints a float32: 1e-05, not 9.99e-06)."""
    for digits in range(1, 10):
        y = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", y))[0] == x:
            return y
    return x


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise GGUFError(f"invalid GGUF: metadata value {where} is {'NaN' if math.isnan(value) else 'infinite'}")


def _scalar(r: _Reader, kind: int, key: str) -> Any:
    name, fmt = _SCALARS[kind]
    value = r.unpack(struct.Struct("<" + fmt), f"metadata value {key}")
    if name == "bool":
        if value > 1:
            raise GGUFError(f"invalid GGUF: metadata value {key} is a bool of {value}, not 0 or 1")
        return bool(value)
    if name.startswith("float"):
        _check_finite(value, key)
        return _float32(value) if name == "float32" else value
    return value


def _array(r: _Reader, key: str, keep: bool) -> list[Any] | None:
    kind = r.unpack(_U32, f"the element type of {key}")
    n = r.unpack(_U64, f"the length of {key}")
    if kind != _STRING and kind not in _SCALARS:
        what = "arrays" if kind == _ARRAY else f"unknown type {kind}"
        raise GGUFError(f"invalid GGUF: metadata value {key} is an array of {what}")
    if n > MAX_ARRAY_LENGTH:
        raise GGUFError(f"invalid GGUF: metadata value {key} has {n} elements, "
                        f"more than the {MAX_ARRAY_LENGTH} allowed")
    if kind == _STRING:
        if n * 8 > r.left():
            raise GGUFError(f"invalid GGUF: metadata value {key} claims {n} strings, more than the file holds")
        strings = r.strings(n, key)
        return strings if keep else (None if n else [])
    name, fmt = _SCALARS[kind]
    size = struct.calcsize(fmt)
    if n * size > r.left():
        raise GGUFError(f"invalid GGUF: metadata value {key} claims {n} elements, more than the file holds")
    data = r.take(n * size, f"metadata value {key}")
    if name == "bool" and data.translate(None, b"\x00\x01"):
        bad = next(i for i, b in enumerate(data) if b > 1)
        raise GGUFError(f"invalid GGUF: metadata value {key}[{bad}] is a bool of {data[bad]}, not 0 or 1")
    if name.startswith("float"):
        floats = array.array(fmt, data)
        if sys.byteorder == "big":
            floats.byteswap()
        if not math.isfinite(sum(floats)):  # fast path: a sum of float32s or of small float64s is finite iff all are
            for i, x in enumerate(floats):
                _check_finite(x, f"{key}[{i}]")
        if keep:
            return [_float32(x) for x in floats] if name == "float32" else floats.tolist()
    if not keep:
        return None if n else []
    values = list(struct.unpack(f"<{n}{fmt}", data))
    return [bool(v) for v in values] if name == "bool" else values


def read_gguf(path: str | os.PathLike[str], *, arrays: bool = False) -> GGUFInfo:
    """Read and check a GGUF file's metadata and tensor table, without trusting anything in it.

    With ``arrays=False`` (Ollama's non-verbose ``/api/show``) array values are still read and
    checked but reported as ``None`` (``[]`` if empty), as Ollama reports them as ``null``.
    ``metadata["general.parameter_count"]`` is the computed parameter count, as Ollama sets it.
    Raises :class:`GGUFError` for a file that is not a valid GGUF file, ``OSError`` if it cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        r = _Reader(f, size)
        magic = r.take(4, "the magic number") if size >= 4 else f.read()
        if magic != GGUF_MAGIC:
            raise GGUFError(f"invalid GGUF: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
        version = r.unpack(_U32, "the version")
        if version not in (2, 3):
            if version in (2 << 24, 3 << 24):
                raise GGUFError("invalid GGUF: big-endian GGUF files are not supported")
            raise GGUFError(f"invalid GGUF: unsupported GGUF version {version} (2 and 3 are supported)")
        n_tensors = r.unpack(_U64, "the tensor count")
        n_kv = r.unpack(_U64, "the metadata key count")
        if n_kv > MAX_KEYS:
            raise GGUFError(f"invalid GGUF: {n_kv} metadata keys, more than the {MAX_KEYS} allowed")
        if n_tensors > MAX_TENSORS:
            raise GGUFError(f"invalid GGUF: {n_tensors} tensors, more than the {MAX_TENSORS} allowed")
        if n_kv * 13 + n_tensors * 24 > r.left():  # the smallest possible key/value and tensor entries
            raise GGUFError(f"invalid GGUF: the header claims {n_kv} metadata keys and {n_tensors} tensors, "
                            "more than the file holds")

        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = r.string(f"metadata key #{i}", MAX_KEY_LENGTH)
            if key in metadata:
                raise GGUFError(f"invalid GGUF: metadata key {key} appears twice")
            kind = r.unpack(_U32, f"the type of metadata value {key}")
            if kind == _STRING:
                metadata[key] = r.string(f"metadata value {key}", MAX_STRING_LENGTH)
            elif kind == _ARRAY:
                metadata[key] = _array(r, key, arrays)
            elif kind in _SCALARS:
                metadata[key] = _scalar(r, kind, key)
            else:
                raise GGUFError(f"invalid GGUF: metadata value {key} has unknown type {kind}")
            if key == "general.alignment" and kind != _UINT32:
                raise GGUFError("invalid GGUF: general.alignment is not a uint32")

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"invalid GGUF: general.alignment {alignment} is not a power of two")

        tensors: list[dict[str, Any]] = []
        placed: list[tuple[str, int, int]] = []  # name, offset, bytes
        names: set[str] = set()
        for i in range(n_tensors):
            name = r.string(f"the name of tensor #{i}", MAX_TENSOR_NAME)
            if name in names:
                raise GGUFError(f"invalid GGUF: tensor {name} appears twice")
            names.add(name)
            n_dims = r.unpack(_U32, f"the dimension count of tensor {name}")
            if n_dims > MAX_DIMS:
                raise GGUFError(f"invalid GGUF: tensor {name} has {n_dims} dimensions, more than {MAX_DIMS}")
            shape = [r.unpack(_U64, f"the shape of tensor {name}") for _ in range(n_dims)]
            kind = r.unpack(_U32, f"the type of tensor {name}")
            offset = r.unpack(_U64, f"the offset of tensor {name}")
            if kind not in GGML_TYPES:
                raise GGUFError(f"invalid GGUF: tensor {name} has unknown type {kind}")
            type_name, block, block_bytes = GGML_TYPES[kind]
            elements = math.prod(shape)
            if any(d > _INT64_MAX for d in shape) or elements > _INT64_MAX:
                raise GGUFError(f"invalid GGUF: tensor {name} has an impossible shape {shape}")
            if shape and shape[0] % block:
                raise GGUFError(f"invalid GGUF: tensor {name} has rows of {shape[0]} elements, "
                                f"not a multiple of {type_name}'s block of {block}")
            if offset % alignment:
                raise GGUFError(f"invalid GGUF: tensor {name} starts at {offset}, not a multiple of {alignment}")
            tensors.append({"name": name, "type": type_name, "shape": shape})
            placed.append((name, offset, elements // block * block_bytes))

        data_offset = -(-r.pos // alignment) * alignment
        for name, offset, nbytes in placed:
            if data_offset + offset + nbytes > size:
                raise GGUFError(f"invalid GGUF: tensor {name} ({nbytes} bytes at data offset {offset}) "
                                f"lies beyond the end of the file ({size} bytes)")

    parameter_count = sum(math.prod(t["shape"]) for t in tensors)
    metadata["general.parameter_count"] = parameter_count
    return GGUFInfo(version=version, metadata=metadata, tensors=tensors, parameter_count=parameter_count,
                    alignment=alignment, data_offset=data_offset)


# --- the llama.cpp trial load, in a child process ---



def validate_in_subprocess(path: str | os.PathLike[str], timeout: float = 30, *,
                           memory_limit: int = SUBPROCESS_MEMORY) -> GGUFInfo:
    """:func:`read_gguf` and a llama.cpp vocabulary load of ``path``, both in a child process.

    The child has ``timeout`` seconds and ``memory_limit`` bytes of address space. A file that
    fails either check, or makes llama.cpp crash, abort or hang, raises :class:`GGUFError`;
    the calling process is never at risk. ``OSError`` if the file cannot be read. Blocks: call it
    from a worker thread in async code.
    """
    os.stat(path)  # a missing file is an OSError, as with read_gguf, not a verdict on its contents
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds llm_experiment/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "GGML_NO_BACKTRACE": "1"}  # no gdb backtrace when ggml aborts
    command = [sys.executable, "-m", "llm_experiment.engine.gguf_info",
               "--memory-limit", str(memory_limit), os.fspath(path)]
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: llama.cpp may print a lot; we keep the end
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                  env=env, timeout=timeout, close_fds=True, check=False)
        except subprocess.TimeoutExpired:  # run() has killed the child
            raise GGUFError(f"invalid GGUF: llama.cpp could not load its vocabulary "
                            f"(no answer within {timeout:g} s)") from None
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 65536))
        output = stderr.read().decode("utf-8", "replace")
    reply: dict[str, Any] = {}
    try:
        reply = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        pass
    if "info" in reply and done.returncode == 0:
        return GGUFInfo(**reply["info"])
    if "error" in reply:  # read_gguf's own verdict
        raise GGUFError(reply["error"])
    last = _last_error_line(output)
    if "llama_error" in reply:  # llama.cpp refused the file; its reason is on stderr, not in the exception
        detail = last or reply["llama_error"]
    else:
        reason = f"exited with status {done.returncode}"
        if done.returncode < 0:
            try:
                reason = f"crashed with {signal.Signals(-done.returncode).name}"
            except ValueError:
                reason = f"crashed with signal {-done.returncode}"
        detail = f"{reason}: {last}" if last else reason
    raise GGUFError(f"invalid GGUF: llama.cpp could not load its vocabulary ({detail})")


def _last_error_line(text: str) -> str:
    """The last line of llama.cpp's output that tells an error, else the last that tells a failure, else ''."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for words in (("error", "assert", "terminate", "exception"), ("failed",)):
        for line in reversed(lines):
            if any(word in line.lower() for word in words):
                return line[:500]
    return ""


def _limit_resources(memory_limit: int) -> None:
    """Cap the child's address space, stop core dumps and bound its CPU time."""
    try:
        import resource
    except ImportError:  # Windows: no rlimits; the parent's timeout still bounds the child
        return

    for limit, value in ((resource.RLIMIT_AS, memory_limit), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, 600)):
        _, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard))


def _main(argv: list[str]) -> int:
    """The child: check the file named in ``argv`` and print one JSON line on the original stdout."""
    memory_limit = SUBPROCESS_MEMORY
    if len(argv) == 3 and argv[0] == "--memory-limit":
        memory_limit, argv = int(argv[1]), argv[2:]
    if len(argv) != 1:
        print("usage: python -m llm_experiment.engine.gguf_info [--memory-limit BYTES] PATH", file=sys.stderr)
        return 2
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever llama.cpp prints goes to stderr; stdout carries only our answer
    sys.stdout = sys.stderr
    _limit_resources(memory_limit)
    try:
        info = read_gguf(argv[0])
    except GGUFError as e:
        reply: dict[str, Any] = {"error": str(e)}
    else:
        try:
            from .llama import check_vocabulary  # llama.cpp, in this throwaway process only

            check_vocabulary(argv[0])
        except Exception as e:  # llama-cpp-python raises ValueError; llama.cpp's reason is on stderr
            lines = str(e).strip().splitlines() or [""]
            reply = {"llama_error": f"{type(e).__name__}: {lines[-1][:500]}"}
        else:
            reply = {"info": info.to_json()}
    out.write(json.dumps(reply) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
