"""What the tests share: the model name, greedy options, the documented 500s, and starting extra engines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO

from llm_experiment.embedded import EmbeddedServer

MODEL = "smollm2:135m"
#: Deterministic output for assertions on content.
GREEDY = {"temperature": 0, "seed": 42}
#: The 500s a client may get from Ollama for a request (everything else must be a 2xx or a 4xx).
DOCUMENTED_500 = re.compile(
    r'^(option "[^"]*" must be of |invalid format: |invalid JSON schema in format|model runner has unexpectedly '
    r"stopped|llama runner process has terminated|template: |pull model manifest: file does not exist"
    r"|failed to marshal completion request: json: unsupported value"  # a float32 option past float32
    r"|json: cannot unmarshal \w+ into Go value of type (\[\])?string$"  # create: a license neither text nor list
    # the legacy /api/embeddings answers every failure of the embedding itself with 500, as Ollama
    r"|the input length exceeds the context length$|input after truncation exceeds maximum context length$"
    r'|"[^"]*" does not support embeddings)')


class RunningEngine:
    """A started engine: its URL and the log it writes (stdout and stderr)."""

    def __init__(self, url: str, log_path: Path, server: EmbeddedServer | None = None):
        self.url = url
        self.log_path = log_path
        self.server = server

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_engine(tmp: Path, name: str, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> tuple[RunningEngine, IO[str]]:
    """Start one more engine (for settings the shared one does not have); the caller stops it."""
    log_path = tmp / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller
    server = EmbeddedServer(log=log, args=args, env={"OLLAMA_MODELS": str(tmp / "models"), **(env or {})})
    server.start()
    return RunningEngine(server.url, log_path, server), log
