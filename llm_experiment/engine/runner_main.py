"""Inside a runner process: load one model, then run the jobs the server sends, one at a time.

The server starts ``python -m llm_experiment.engine.runner_main`` (see :mod:`.runner`) and talks
to it in JSON lines over its standard input and output (anything else that would print on standard
output, llama.cpp included, is sent to standard error):

    server -> runner   {"op": "load", "path", "num_ctx", "threads", "embedding"}   once, first
                       {"op": "run", "id", "kind", ...}                 a generation (see :func:`_run`)
                                                                        or embeddings (kind "embed", :func:`_embed`)
                       {"op": "cancel", "id"}                           stop that generation after this token
    runner -> server   {"ev": "loaded", "load_duration", "n_vocab"}
                       {"ev": "phase", "id", "phase": "grammar"}       slow native work starts: a short deadline
                       {"ev": "progress", "id"}                         still working (prompt chunks)
                       {"ev": "piece", "id", "text", "logprobs"?}      generated text (logprobs if asked)
                       {"ev": "done", "id", ...counts and durations}    the end of a generation
                       {"ev": "done", "id", "vectors", "dim", ...}      the end of an embedding job
                       {"ev": "error", "id", "status", "message"}      a request the model cannot run

Anything that goes wrong in native code (a crash, an abort, an endless loop) ends or stalls this
process only; the server notices, answers the request with an error and starts a new runner.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict
from typing import IO, Any

MEMORY_ENV = "LLM_EXPERIMENT_RUNNER_MEMORY"


def _die_with_parent() -> None:
    """Ask Linux to kill us when the server dies, even by kill -9 (no orphaned runners)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the closed command pipe still ends us


def _limit_memory() -> None:
    """Cap the heap (private writable memory): an allocation past it fails inside this process only."""
    limit = int(os.environ.get(MEMORY_ENV, "0") or 0)
    try:
        import resource
    except ImportError:  # Windows: no rlimits; the watchdog still ends a runner that stops answering
        return
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


class Channel:
    """The two pipes to the server: commands in (read by a thread), events out."""

    def __init__(self, in_fd: int, out_fd: int):
        self._in = os.fdopen(in_fd, "rb")
        self._out: IO[bytes] = os.fdopen(out_fd, "wb")
        self._lock = threading.Lock()
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.current: int | None = None
        self.cancel = threading.Event()

    def send(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")
        with self._lock:
            self._out.write(data)
            self._out.flush()

    def read_first(self) -> dict[str, Any] | None:
        line = self._in.readline()
        return json.loads(line) if line else None

    def listen(self) -> None:
        """Thread: sort commands into the job queue; a cancel takes effect at once."""
        for line in self._in:
            command = json.loads(line)
            if command["op"] == "run":
                self.jobs.put(command)
            elif command["op"] == "cancel":
                self.cancelled.add(command["id"])
                if command["id"] == self.current:
                    self.cancel.set()
        self.cancel.set()  # the server closed the pipe: stop whatever runs and exit
        self.jobs.put(None)


def main() -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the server's to handle
    _limit_memory()
    events = os.dup(1)  # our events go out on the real standard output...
    os.dup2(2, 1)  # ...and whatever else writes to it (native code) lands on standard error
    sys.stdout = sys.stderr
    channel = Channel(0, events)

    from .llama import LlamaModel  # imports llama.cpp: done while the server waits for "loaded"

    load = channel.read_first()
    if load is None:
        return 0
    try:
        model = LlamaModel(load["path"], load["num_ctx"], load.get("threads"), bool(load.get("embedding")))
    except Exception as exc:  # noqa: BLE001 - llama-cpp-python raises ValueError and others for a bad file
        channel.send({"ev": "error", "id": 0, "status": 500, "message": f"error loading model: {exc}"})
        return 1
    channel.send({"ev": "loaded", "load_duration": model.load_duration, "n_vocab": model.n_vocab})
    threading.Thread(target=channel.listen, daemon=True).start()
    while (job := channel.jobs.get()) is not None:
        channel.current = job["id"]
        channel.cancel.clear()
        if job["id"] in channel.cancelled:
            channel.cancel.set()
        try:
            _run(model, job, channel)
        except Exception as exc:  # noqa: BLE001 - report it; the process stays usable
            channel.send({"ev": "error", "id": job["id"], "status": 500, "message": str(exc) or type(exc).__name__})
        channel.current = None
        channel.cancelled.discard(job["id"])
    return 0


def _embed(model: Any, job: dict[str, Any], channel: Channel) -> None:
    """Embed ``job["inputs"]``; answer the unit vectors as base64 of little-endian float32 rows."""
    import base64

    from .llama import EmbedError

    jid = job["id"]
    start = time.perf_counter_ns()
    try:
        matrix, count = model.embed(job["inputs"], truncate=job["truncate"], limit=job["limit"],
                                    dimensions=job["dimensions"], cancelled=channel.cancel.is_set,
                                    progress=lambda: channel.send({"ev": "progress", "id": jid}))
    except EmbedError as exc:
        channel.send({"ev": "error", "id": jid, "status": exc.status, "message": exc.message})
        return
    channel.send({"ev": "done", "id": jid, "vectors": base64.b64encode(matrix.astype("<f4").tobytes()).decode(),
                  "dim": int(matrix.shape[1]), "prompt_eval_count": count,
                  "prompt_eval_duration": time.perf_counter_ns() - start})


def _run(model: Any, job: dict[str, Any], channel: Channel) -> None:
    """One generation: build the grammar and the prompt, generate, report the counts."""
    from .gotemplate import TemplateError

    if job["kind"] == "embed":
        _embed(model, job, channel)
        return
    if model.embedding:  # the server never sends this; a runner that would crash on it refuses instead
        channel.send({"ev": "error", "id": job["id"], "status": 400, "message": "this model only makes embeddings"})
        return
    from .llama import grammar_for
    from .options import InvalidTokenError, Options

    jid = job["id"]
    opts = Options(**job["options"])
    grammar = None
    if job.get("format") is not None:
        channel.send({"ev": "phase", "id": jid, "phase": "grammar"})
        try:
            grammar = grammar_for(job["format"])
        except ValueError as exc:
            channel.send({"ev": "error", "id": jid, "status": 500, "message": str(exc)})
            return
    try:
        prompt = _prompt_tokens(model, job)
    except TemplateError as exc:
        channel.send({"ev": "error", "id": jid, "status": 500, "message": f"template: {exc}"})
        return
    except InvalidTokenError as exc:
        channel.send({"ev": "error", "id": jid, "status": 400, "message": str(exc)})
        return
    channel.send({"ev": "progress", "id": jid})

    def emit(text: str, logprobs: list[dict[str, Any]]) -> None:
        event: dict[str, Any] = {"ev": "piece", "id": jid, "text": text}
        if logprobs:
            event["logprobs"] = logprobs
        channel.send(event)

    def progress() -> None:
        channel.send({"ev": "progress", "id": jid})

    gen = model.generate(prompt, opts, emit, channel.cancel.is_set, grammar, progress, job.get("logprobs"))
    done = {k: v for k, v in asdict(gen).items() if k not in ("prompt_tokens", "output_tokens")}
    if job.get("context_out"):
        done["context"] = gen.prompt_tokens + gen.output_tokens
    channel.send({"ev": "done", "id": jid, **done})


def _prompt_tokens(model: Any, job: dict[str, Any]) -> list[int]:
    """The prompt as tokens: raw text, a generate prompt (after an earlier ``context``) or a chat."""
    from .gotemplate import TemplateError
    from .options import check_context_tokens
    from .prompt import fit_messages, render

    if job["kind"] == "raw":
        return model.tokenize(job["prompt"])
    template = job.get("template") or ""
    messages = job["messages"]
    if job["kind"] == "generate":
        context = job.get("context") or []
        check_context_tokens(context, model.n_vocab)
        context = context[-model.num_ctx:]  # only the end of a longer context could fit the window
        before = model.detokenize(context) if context else ""  # Ollama prepends the old context as text
        text = before + render(template, messages)
    else:
        def as_text(msgs: list[dict[str, Any]]) -> str:
            return render(template, msgs)

        def count(text: str) -> int:
            return len(model.tokenize(text))

        text = as_text(fit_messages(messages, model.num_ctx, count, as_text))
    if not text.strip():
        # A TEMPLATE that prints nothing for these messages (or nothing within its step budget):
        # llama.cpp cannot start from an empty prompt.
        raise TemplateError("the model's TEMPLATE rendered an empty prompt for these messages")
    return model.tokenize(text)


if __name__ == "__main__":
    sys.exit(main())
