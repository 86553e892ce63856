"""Inside a runner process: load one model, then run the jobs the server sends.

The server starts ``python -m llm_experiment.engine.runner_main`` (see :mod:`.runner`) and talks
to it in JSON lines over its standard input and output (anything else that would print on standard
output, llama.cpp included, is sent to standard error):

    server -> runner   {"op": "load", "path", "num_ctx", "threads", "embedding", "parallel"}   once, first
                       {"op": "run", "id", "kind", ...}                 a generation (see :func:`_start`)
                                                                        or embeddings (kind "embed", :func:`_embed`)
                       {"op": "cancel", "id"}                           stop that job after its current token
    runner -> server   {"ev": "loaded", "load_duration", "n_vocab", "parallel"}
                       {"ev": "phase", "id", "phase": "grammar"}       slow native work starts: a short deadline
                       {"ev": "progress", "id"}                         still working (prompt chunks)
                       {"ev": "piece", "id", "text", "logprobs"?}      generated text (logprobs if asked)
                       {"ev": "done", "id", ...counts and durations}    the end of a generation
                       {"ev": "done", "id", "vectors", "dim", ...}      the end of an embedding job
                       {"ev": "error", "id", "status", "message"}      a request the model cannot run

Up to ``parallel`` generations run at once, decoded together (:mod:`.batch`); their events
interleave, each tagged with its job's id. Embedding jobs run one at a time.

Anything that goes wrong in native code (a crash, an abort, an endless loop) ends or stalls this
process only; the server notices, answers the requests with an error and starts a new runner.
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
        self._write_lock = threading.Lock()
        self._command_lock = threading.Lock()  # one command handled at a time (see forget_cancels)
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.closed = False

    def send(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")
        with self._write_lock:
            self._out.write(data)
            self._out.flush()

    def error(self, jid: int, status: int, message: str) -> None:
        """Job ``jid`` failed: the server answers ``status`` with ``message``."""
        self.send({"ev": "error", "id": jid, "status": status, "message": message})

    def read_first(self) -> dict[str, Any] | None:
        line = self._in.readline()
        return json.loads(line) if line else None

    def listen(self) -> None:
        """Thread: sort commands into the job queue; a cancel takes effect at the job's next token."""
        for line in self._in:
            command = json.loads(line)
            with self._command_lock:
                if command["op"] == "run":
                    self.jobs.put(command)
                elif command["op"] == "cancel":
                    self.cancelled.add(command["id"])
        self.closed = True  # the server closed the pipe: stop whatever runs and exit
        self.jobs.put(None)

    def is_cancelled(self, jid: int) -> bool:
        return self.closed or jid in self.cancelled

    def take(self, most: int, wait: bool) -> list[dict[str, Any] | None]:
        """Up to ``most`` jobs the server sent; with ``wait``, block until there is one."""
        taken: list[dict[str, Any] | None] = []
        if most > 0 and wait:
            taken.append(self.jobs.get())
        while len(taken) < most and None not in taken:
            try:
                taken.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        return taken

    def forget_cancels(self) -> None:
        """With nothing running: drop cancels of jobs that had already ended when the cancel came.

        Safe while no job is queued: the server sends a job's cancel after the job itself, and the
        listener handles one command at a time, so every remembered cancel is for a finished job.
        """
        with self._command_lock:
            if self.jobs.empty():
                self.cancelled.clear()


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
        model = LlamaModel(load["path"], load["num_ctx"], load.get("threads"), bool(load.get("embedding")),
                           max(1, int(load.get("parallel") or 1)))
    except Exception as exc:  # noqa: BLE001 - llama-cpp-python raises ValueError and others for a bad file
        channel.error(0, 500, f"error loading model: {exc}")
        return 1
    channel.send({"ev": "loaded", "load_duration": model.load_duration, "n_vocab": model.n_vocab,
                  "parallel": model.parallel})
    threading.Thread(target=channel.listen, daemon=True).start()
    serve(model, channel)
    return 0


def serve(model: Any, channel: Channel) -> None:
    """Run the server's jobs until it closes the pipe: generations batched, embeddings one at a time."""
    decoder = None if model.embedding else model.batch()
    wanted: dict[int, bool] = {}  # running generations: whether the server wants the tokens back ("context")
    while True:
        idle = decoder is None or decoder.active == 0
        if idle:
            channel.forget_cancels()
        for job in channel.take(decoder.free if decoder else 1, wait=idle):
            if job is None:
                return  # the server is gone: stop
            if decoder is None or job["kind"] == "embed":
                _run_alone(model, job, channel)
            elif _start(model, decoder, job, channel):
                wanted[job["id"]] = bool(job.get("context_out"))
        if decoder is None or decoder.active == 0:
            continue
        try:
            finished = decoder.step(channel.is_cancelled)
        except Exception as exc:  # noqa: BLE001 - llama.cpp refused the batch (or memory ran out): fail them all
            finished = []
            for jid in decoder.reset():
                channel.error(jid, 500, _text(exc))
                wanted.pop(jid, None)
        for jid, gen in finished:
            done = {k: v for k, v in asdict(gen).items() if k not in ("prompt_tokens", "output_tokens")}
            if wanted.pop(jid, False):
                done["context"] = gen.prompt_tokens + gen.output_tokens
            channel.send({"ev": "done", "id": jid, **done})


def _run_alone(model: Any, job: dict[str, Any], channel: Channel) -> None:
    """A job that does not batch: embeddings, or a generation an embedding model refuses."""
    try:
        if job["kind"] == "embed":
            _embed(model, job, channel)
        else:  # the server never sends this; a runner that would crash on it refuses instead
            channel.error(job["id"], 400, "this model only makes embeddings")
    except Exception as exc:  # noqa: BLE001 - report it; the process stays usable
        channel.error(job["id"], 500, _text(exc))


def _embed(model: Any, job: dict[str, Any], channel: Channel) -> None:
    """Embed ``job["inputs"]``; answer the unit vectors as base64 of little-endian float32 rows."""
    import base64

    from .llama import EmbedError

    jid = job["id"]
    start = time.perf_counter_ns()
    try:
        matrix, count = model.embed(job["inputs"], truncate=job["truncate"], limit=job["limit"],
                                    dimensions=job["dimensions"], cancelled=lambda: channel.is_cancelled(jid),
                                    progress=lambda: channel.send({"ev": "progress", "id": jid}))
    except EmbedError as exc:
        channel.error(jid, exc.status, exc.message)
        return
    channel.send({"ev": "done", "id": jid, "vectors": base64.b64encode(matrix.astype("<f4").tobytes()).decode(),
                  "dim": int(matrix.shape[1]), "prompt_eval_count": count,
                  "prompt_eval_duration": time.perf_counter_ns() - start})


def _start(model: Any, decoder: Any, job: dict[str, Any], channel: Channel) -> bool:
    """Build the grammar and the prompt of a generation and add it to the batch; False if it was refused."""
    from .generation import Request
    from .gotemplate import TemplateError
    from .options import InvalidTokenError, Options

    jid = job["id"]
    try:
        opts = Options(**job["options"])
        grammar = None
        if job.get("format") is not None:
            from .llama import grammar_for

            channel.send({"ev": "phase", "id": jid, "phase": "grammar"})
            try:
                grammar = grammar_for(job["format"])
            except ValueError as exc:
                channel.error(jid, 500, str(exc))
                return False
        try:
            prompt = _prompt_tokens(model, job)
        except TemplateError as exc:
            channel.error(jid, 500, f"template: {exc}")
            return False
        except InvalidTokenError as exc:
            channel.error(jid, 400, str(exc))
            return False
        channel.send({"ev": "progress", "id": jid})

        def emit(text: str, logprobs: list[dict[str, Any]]) -> None:
            event: dict[str, Any] = {"ev": "piece", "id": jid, "text": text}
            if logprobs:
                event["logprobs"] = logprobs
            channel.send(event)

        decoder.add(Request(jid=jid, prompt=prompt, opts=opts, emit=emit, grammar=grammar,
                            progress=lambda: channel.send({"ev": "progress", "id": jid}),
                            logprobs=job.get("logprobs")))
    except Exception as exc:  # noqa: BLE001 - report it; the process and the other generations go on
        channel.error(jid, 500, _text(exc))
        return False
    return True


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


def _text(exc: BaseException) -> str:
    """What to tell the server of an unexpected exception: its message, or at least its type."""
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
