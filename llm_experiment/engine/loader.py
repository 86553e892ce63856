"""Creating ``llama_cpp.Llama`` objects safely on every CPU."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_c

_patch_lock = threading.Lock()


@cache
def cpu_has_amx() -> bool:
    """Whether the CPU advertises Intel AMX (recent Xeons)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def load_llama(path: str | Path, **kwargs: Any) -> llama_cpp.Llama:
    """``llama_cpp.Llama(model_path=path, **kwargs)``, avoiding llama.cpp's AMX kernels.

    With llama-cpp-python 0.3.36 on an AMX-capable Xeon, evaluating more than one token at once
    crashes inside ``ggml_backend_amx_mul_mat`` (a segmentation fault, seen on the course's
    machines). On such CPUs we turn off llama.cpp's "extra buffer types" (AMX and weight
    repacking), which ``Llama()`` offers no argument for, so we adjust its default parameters
    while it loads. Elsewhere nothing changes.
    """
    if not cpu_has_amx():
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    with _patch_lock:
        original = llama_c.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        llama_c.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            llama_c.llama_model_default_params = original
