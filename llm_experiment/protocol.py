"""Names and tables of Ollama's API that the client helpers and the engine both use.

This module imports nothing from :mod:`llm_experiment.engine`, so the client side (a student's
notebook) never loads the server's code: model name rules and the table of ``options``.
"""

from __future__ import annotations

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"

# name -> Go type in Ollama's api.Options. Every one is accepted; the embedded engine uses the
# sampling options, num_ctx, num_keep and stop; the others only matter to a GPU or another runner.
OPTION_TYPES: dict[str, str] = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string", "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int",
    "use_mmap": "bool", "num_thread": "int",
    # deprecated in Ollama, still accepted
    "mirostat": "int", "mirostat_tau": "float32", "mirostat_eta": "float32", "tfs_z": "float32",
    "penalize_newline": "bool", "low_vram": "bool", "f16_kv": "bool", "logits_all": "bool",
    "vocab_only": "bool", "use_mlock": "bool", "numa": "bool",
}


def parse_name(name: str) -> tuple[str, str, str, str] | None:
    """``name`` as (host, namespace, model, tag), defaults filled in; ``None`` if Ollama would refuse it.

    Ollama's ``model.ParseName`` and ``Name.IsValid`` (types/model/name.go): a colon after the last
    slash starts the tag; a separator with nothing on one side makes the name invalid (``"x:"``,
    ``"/x"``); a ``scheme://`` before the host is dropped. Every part is ASCII only: it starts with
    a letter, digit or ``_`` and goes on with those or ``-`` and ``_``, plus ``.`` (not in the
    namespace) and ``:`` (only in the host, for a port). Parts are at most 80 bytes, the host 350.
    Surrounding white space is dropped first, as Ollama's ``modelref.ParseRef`` does. Case is kept.
    """
    s = name.strip()
    host, namespace, tag = DEFAULT_REGISTRY, DEFAULT_NAMESPACE, "latest"
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
        tag = tag or _MISSING
    if "/" in s:
        s, _, model = s.rpartition("/")
        model = model or _MISSING
        if "/" in s:
            s, _, namespace = s.rpartition("/")
            namespace = namespace or _MISSING
            if not s:
                host = _MISSING
            else:  # an empty host after a scheme ("https:///ns/m") takes the default, as in Go's Merge
                host = (s.partition("://")[2] if "://" in s else s) or DEFAULT_REGISTRY
        else:
            namespace = s or _MISSING
    else:
        model = s
    if not (_valid_part(host, ".:", 350) and _valid_part(namespace, "", 80) and _valid_part(model, ".", 80)
            and _valid_part(tag, ".", 80)):
        return None
    return host, namespace, model, tag


def normalize_name(name: str) -> str | None:
    """``smollm2:135m`` -> ``registry.ollama.ai/library/smollm2:135m``; ``None`` if not a valid name.

    As in Ollama, the tag defaults to ``latest``, the namespace to ``library`` and the host to
    ``registry.ollama.ai``. The case is kept (Ollama stores names as given); compare names with
    :func:`name_key`, which ignores case, as Ollama does.
    """
    parts = parse_name(name)
    if parts is None:
        return None
    host, namespace, model, tag = parts
    return f"{host}/{namespace}/{model}:{tag}"


def name_key(full: str) -> str:
    """What two names must share to be the same model: Ollama compares names with ``strings.EqualFold``.

    Valid names are ASCII, so lower-casing them is exact (unlike ``"İ".lower()``, two code points).
    """
    return full.lower()


def display_name(full: str) -> str:
    """The short form users see (Ollama's ``Name.DisplayShortest``): ``registry.ollama.ai/library/x:y`` -> ``x:y``.

    The default host and namespace are left out whatever their case; ``ns/x:y`` for another namespace.
    """
    parts = parse_name(full)
    if parts is None:
        return full
    host, namespace, model, tag = parts
    if host.lower() != DEFAULT_REGISTRY:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


_MISSING = "!MISSING!"  # Ollama's MissingPart: a part promised by a separator but empty; never valid
_ASCII_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _valid_part(part: str, extra: str, max_bytes: int) -> bool:
    """Ollama's ``isValidPart``: ASCII letters, digits and ``_`` first; then also ``-`` and ``extra``."""
    if not 1 <= len(part.encode("utf-8", "surrogatepass")) <= max_bytes or part[0] not in _ASCII_WORD:
        return False
    allowed = _ASCII_WORD | set("-" + extra)
    return all(c in allowed for c in part[1:])
