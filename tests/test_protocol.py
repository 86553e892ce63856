"""Model names: Ollama's rules (types/model/name.go, with the cases of its name_test.go)."""

from __future__ import annotations

import pytest

from llm_experiment.protocol import display_name, name_key, normalize_name, parse_name

PART80 = "8" * 80
PART350 = "3" * 350

PARSED = {
    "registry.ollama.ai/library/dolphin-mistral:7b-v2.6-dpo-laser-q6_K":
        ("registry.ollama.ai", "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K"),
    "scheme://host:port/namespace/model:tag": ("host:port", "namespace", "model", "tag"),
    "host/namespace/model:tag": ("host", "namespace", "model", "tag"),
    "host:port/namespace/model": ("host:port", "namespace", "model", "latest"),
    "namespace/model": ("registry.ollama.ai", "namespace", "model", "latest"),
    "model": ("registry.ollama.ai", "library", "model", "latest"),
    "h/nn/mm:t": ("h", "nn", "mm", "t"),
    "_why/_the/_lucky:_stiff": ("_why", "_the", "_lucky", "_stiff"),
    "host:https/namespace/model:tag": ("host:https", "namespace", "model", "tag"),
    f"{PART80}/{PART80}/{PART80}:{PART80}": (PART80, PART80, PART80, PART80),
    f"{PART350}/{PART80}/{PART80}:{PART80}": (PART350, PART80, PART80, PART80),
    "https:///ns/m": ("registry.ollama.ai", "ns", "m", "latest"),  # an empty host takes the default
    "  smollm2:135m\n": ("registry.ollama.ai", "library", "smollm2", "135m"),  # trimmed, as modelref.ParseRef
    "MyModel:Q4_K_M": ("registry.ollama.ai", "library", "MyModel", "Q4_K_M"),  # case is kept
}

INVALID = [
    "", "   ", "n/m:", "@t", "m@d", "^", "mm:", "/nn/mm", "//", "//mm", "hh//", "//mm:@", "00@", "@",
    "-hh/nn/mm:tt", "hh/-nn/mm:tt", "hh/nn/-mm:tt", "hh/nn/mm:-tt", "host/name:space/model:tag",
    "a/b/c/d", "a.b/c", "x" * 81, f"{'3' * 351}/n/m:t", "x:" + "t" * 81,
    # letters outside ASCII are not allowed anywhere (isAlphanumericOrUnderscore works on bytes)
    "İstanbul", "i̇stanbul", "café", "modèle:latest", "ns/naïve", "x:tæg", "ｍodel", "١٢٣",
    "has space", "tab\tname", "semi;colon", "a+b", "slash/",
]


@pytest.mark.parametrize("name, parts", PARSED.items(), ids=[n[:40] for n in PARSED])
def test_parse_name(name: str, parts: tuple[str, str, str, str]) -> None:
    assert parse_name(name) == parts
    host, namespace, model, tag = parts
    assert normalize_name(name) == f"{host}/{namespace}/{model}:{tag}"


@pytest.mark.parametrize("name", INVALID, ids=[repr(n[:20]) for n in INVALID])
def test_invalid_names(name: str) -> None:
    assert parse_name(name) is None and normalize_name(name) is None


@pytest.mark.parametrize("full, short", [
    ("registry.ollama.ai/library/x:latest", "x:latest"),
    ("Registry.Ollama.AI/LIBRARY/X:Y", "X:Y"),  # the defaults are recognised whatever their case
    ("registry.ollama.ai/someone/x:latest", "someone/x:latest"),
    ("host:5000/library/x:t", "host:5000/library/x:t"),
])
def test_display_name_is_displayshortest(full: str, short: str) -> None:
    assert display_name(full) == short


def test_names_differing_only_in_case_are_the_same_model() -> None:
    a, b = normalize_name("MyModel"), normalize_name("mymodel:LATEST")
    assert a is not None and b is not None and a != b
    assert name_key(a) == name_key(b)
    assert name_key(a) != name_key(normalize_name("mymodel:v2") or "")


@pytest.mark.parametrize("name", [n for n in PARSED if n.strip()], ids=[n[:40] for n in PARSED if n.strip()])
def test_every_valid_name_round_trips(name: str) -> None:
    """What the store writes (the full name) and lists (the short one) parses back to the same name."""
    full = normalize_name(name)
    assert full is not None
    assert normalize_name(full) == full
    assert name_key(normalize_name(display_name(full)) or "") == name_key(full)
    assert name_key(full).isascii()  # so lower() is a 1:1 case fold, unlike "İ".lower()
