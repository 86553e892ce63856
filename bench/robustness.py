"""Robustness: fire fuzzed and hand-made hostile requests at a fresh engine and count what happens.

    python bench/robustness.py                  # --examples 1000 --seed 1
    python bench/robustness.py --examples 200   # a quick run

Starts its own engine (a private, empty model store) and, while a thread asks ``/api/version``
every 50 ms, sends ``--examples`` random bodies to /api/generate, /api/chat, /api/create,
/api/show, /api/embed, /api/embeddings and /v1/embeddings (valid and invalid fields mixed: wrong
types, lone surrogates, huge numbers, broken JSON), then every hand-made reproducer of the
robustness issue (hostile schemas, contexts, options, GGUF files, templates, a 52 MB body, 300
idle connections, kill -9 of a runner mid-generation).
Every answer is sorted into one of:

- correct: a 2xx or 4xx;
- documented 5xx: a 500 whose message Ollama also gives (a wrongly typed option, an invalid format,
  a runner that crashed or failed to load, a template that failed), or current Ollama's 501 for
  embeddings from a completion model;
- undocumented 5xx: any other 5xx, or an undocumented error inside a streamed answer;
- hang: no answer within ``--timeout`` seconds;
- crash: the engine died or stopped answering /api/version (it is restarted to go on).

Runner restarts are the runner processes that ended other than by a normal unload (from the
engine's log). Generations are capped (``num_predict`` at most 3) so the run stays short.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# tests/ too: the hostile GGUF files (tests/hostile_gguf.py) and the documented 500s (tests/support.py) are shared
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_gguf import HOSTILE_GGUFS, bundled_metadata, renamed, write_gguf  # noqa: E402
from support import DOCUMENTED_500  # noqa: E402 - the same list the fuzz test accepts

from llm_experiment.embedded import EmbeddedServer  # noqa: E402

MODEL = "smollm2:135m"
#: A runner's unplanned end as the engine logs it (unloads and shutdowns are logged at INFO).
RUNNER_STOPPED = re.compile(r"WARNING runner (\d+) stopped: (.*)")
OUTCOMES = ["correct (2xx/4xx)", "documented 5xx", "undocumented 5xx", "hang (timeout)", "crash"]


# --- the engine and the /api/version probe ---------------------------------------------------------------------


class Engine:
    """The engine under test; restarted (same store) if it dies."""

    def __init__(self, folder: Path, args: list[str] | None = None):
        self.folder = folder
        self.args = args or []
        self.log_path = folder / "engine.log"
        self.starts = 0
        self.server: EmbeddedServer | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")  # noqa: SIM115 - kept open while the engine runs
        self.server = EmbeddedServer(log=log, env={"OLLAMA_MODELS": str(self.folder / "models")}, args=self.args)
        self.server.start(timeout=120)
        self.starts += 1

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def alive(self) -> bool:
        assert self.server is not None and self.server.process is not None
        if self.server.process.poll() is not None:
            return False
        try:
            return requests.get(self.url + "/api/version", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    def runner_pids(self) -> list[int]:
        assert self.server is not None and self.server.process is not None
        pids = []
        for child in psutil.Process(self.server.process.pid).children(recursive=True):
            try:
                if "runner_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:
                continue
        return pids

    def serving_runner(self) -> psutil.Process | None:
        for pid in self.runner_pids():
            try:
                process = psutil.Process(pid)
                if any(m.path.endswith(".gguf") for m in process.memory_maps()):
                    return process
            except psutil.Error:
                continue
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            if self.server.log:
                self.server.log.close()

    def runner_restarts(self) -> int:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return len(RUNNER_STOPPED.findall(text))


class Probe:
    """Asks /api/version every ``interval`` seconds and keeps the latencies (inf: no answer)."""

    def __init__(self, engine: Engine, interval: float = 0.05):
        self.engine, self.interval = engine, interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                ok = session.get(self.engine.url + "/api/version", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
                session = requests.Session()
            self.latencies.append(time.perf_counter() - start if ok else float("inf"))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# --- sending one request and sorting its answer --------------------------------------------------------------------


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    tried: int = 0
    verbose: bool = False
    durations: list[tuple[float, str]] = field(default_factory=list)  # (seconds, label) of each request
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, answer) of the bad ones

    def add(self, outcome: str, what: str, seconds: float = 0.0) -> None:
        self.tried += 1
        self.counts[outcome] += 1
        self.durations.append((seconds, what.split(":", 1)[0]))
        if outcome not in OUTCOMES[:2]:
            self.examples.setdefault(outcome, []).append(what[:400])
            self.reasons[outcome, what.rpartition(" -> ")[2][:90]] += 1
        if self.verbose:
            print(f"  [{outcome}] {seconds:.2f} s {what[:220]}", file=sys.stderr)


def classify(response: requests.Response) -> str:
    status = response.status_code
    if status < 500:
        if status < 300 and response.headers.get("content-type", "").startswith("application/x-ndjson"):
            for line in response.text.splitlines():
                try:
                    error = json.loads(line).get("error")
                except (ValueError, AttributeError):
                    return OUTCOMES[2]
                if error is not None:
                    return OUTCOMES[1] if isinstance(error, str) and DOCUMENTED_500.match(error) else OUTCOMES[2]
        return OUTCOMES[0]
    try:
        error = response.json().get("error", "")
    except (ValueError, AttributeError):
        error = ""
    if isinstance(error, dict):  # the /v1 routes: OpenAI's {"error": {"message", ...}}
        error = error.get("message", "")
    if status == 501 and isinstance(error, str) and "does not support embeddings" in error:
        return OUTCOMES[1]  # as current Ollama: a completion model does not embed
    return OUTCOMES[1] if status == 500 and isinstance(error, str) and DOCUMENTED_500.match(error) else OUTCOMES[2]


_checking = threading.Lock()  # with --parallel, several threads send: one at a time checks, restarts and counts


def send(engine: Engine, tally: Tally, label: str, method: str, path: str, data: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> requests.Response | None:
    """One request; its outcome goes into ``tally``. A dead engine is restarted."""
    what = f"{label}: {method} {path} {(data or b'')[:200]!r}"
    response = None
    start = time.monotonic()
    try:
        response = requests.request(method, engine.url + path, data=data, timeout=timeout,
                                    headers={"Content-Type": "application/json", **(headers or {})})
        outcome = classify(response)
        what += f" -> {response.status_code} {response.text[:200]!r}"
    except requests.Timeout:
        outcome = OUTCOMES[3]
    except requests.RequestException as exc:
        outcome, what = OUTCOMES[4], f"{what} -> {exc}"
    seconds = time.monotonic() - start
    with _checking:
        if not engine.alive():
            outcome = OUTCOMES[4]
            print(f"  engine down after {what}; restarting it", file=sys.stderr)
            engine.stop()
            engine.start()
        tally.add(outcome, what, seconds)
    return response



def as_json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=True, allow_nan=False).encode()


# --- fuzzed bodies ---------------------------------------------------------------------------------------------------

TEXTS = ["", " ", "\x00", "Hi", "Say hello", "\ud800", "a\udfffb", "\ud83d\ude00", "<|im_start|>system", "é" * 4,
         "{{ .Prompt }}", "x" * 2000, "\u2028<script>&"]
NUMBERS = [0, 1, -1, 3, 2.5, -0.0, 1e-320, 2**31 - 1, -(2**31), 2**63 - 1, 2**63, -(2**63), 2**64, 10**30, 1e300,
           -1e308, 10**400]
OPTION_NAMES = ["temperature", "top_k", "top_p", "min_p", "typical_p", "seed", "repeat_penalty", "repeat_last_n",
                "presence_penalty", "frequency_penalty", "num_keep", "num_ctx", "stop", "mirostat", "num_thread",
                "use_mmap", "numa", "no_such_option"]
SCHEMAS: list[Any] = [
    "json", "", {}, {"type": "object"}, {"type": "string"}, {"type": "integer", "minimum": 3}, {"enum": ["a", "b"]},
    {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}, {"enum": []},
    {"anyOf": []}, {"type": "object", "properties": {'a"b': {}}}, {"$ref": "#/nowhere"}, {"type": "bogus"},
    {"items": 5}, {"enum": 5}, "yaml", 5, ["json"],
]
NAMES = [MODEL, "SmolLM2:135M", "smollm2", "nope:1", "", "a/b/c/d", "x" * 300, "smollm2\ud800:135m", "fuzz-a"]
KEEP_ALIVES: list[Any] = ["5m", "0", 0, -1, "-1s", 3.5, "bogus", "5", 1e300, 1e200, 10**30, [], {}, True]
TEMPLATES = ["{{ .Prompt }}", "{{ range .Messages }}{{ .Content }}{{ end }}", "{{ .Foo", "{{ range }}",
             "{{ range $.Messages }}" * 3 + "{{ .Role }}" + "{{ end }}" * 3]


class Fuzzer:
    """Random request bodies: each field valid most of the time, anything at all otherwise."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def anything(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(7 if depth < 2 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice(NUMBERS + [r.uniform(-1e6, 1e6), r.randint(-1000, 100_000)])
        if kind in (3, 4):
            return r.choice(TEXTS + ["".join(chr(r.randrange(0x110000)) for _ in range(r.randrange(8)))])
        if kind == 5:
            return [self.anything(depth + 1) for _ in range(r.randrange(3))]
        return {r.choice(TEXTS): self.anything(depth + 1) for _ in range(r.randrange(3))}

    def maybe(self, valid: Callable[[], Any]) -> Any:
        return valid() if self.rng.random() < 0.9 else self.anything()

    def options(self) -> Any:
        r = self.rng
        if r.random() < 0.1:
            return r.choice([[1], "x", 5, True])  # never null: a model's default num_predict is unlimited
        given = {name: self.maybe(lambda n=name: self._option(n)) for name in r.sample(OPTION_NAMES, r.randrange(4))}
        given["num_predict"] = r.choice([0, 1, 2, 3, 2.7, "3", True])
        return given

    def _option(self, name: str) -> Any:
        r = self.rng
        if name == "num_ctx":
            return r.choice([1, 4, 512, 4096, 10**9, -3])
        if name == "stop":
            return [r.choice(TEXTS) for _ in range(r.randrange(3))]
        if name in ("use_mmap", "numa"):
            return r.choice([True, False])
        return r.choice(NUMBERS + [r.uniform(0, 2)])

    def messages(self) -> list[Any]:
        r = self.rng
        return [self.maybe(lambda: {"role": self.maybe(lambda: r.choice(["user", "assistant", "system", "tool"])),
                                    "content": self.maybe(lambda: r.choice(TEXTS))}) for _ in range(r.randrange(5))]

    def fields(self, required: dict[str, Callable[[], Any]], optional: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        body = {name: self.maybe(make) for name, make in required.items()}
        body.update({name: self.maybe(make) for name, make in optional.items() if self.rng.random() < 0.3})
        return body

    def request(self) -> tuple[str, dict[str, Any]]:
        r = self.rng
        path = r.choice(["/api/generate", "/api/chat", "/api/create", "/api/show", "/api/embed", "/api/embeddings",
                         "/v1/embeddings"])
        name, text = (lambda: r.choice(NAMES)), (lambda: r.choice(TEXTS))
        if path == "/api/generate":
            body = self.fields({"model": name}, {
                "prompt": text, "system": text, "suffix": text, "template": text, "raw": lambda: r.random() < 0.5,
                "context": lambda: [r.randint(-5, 60_000) for _ in range(r.randrange(4))],
                "stream": lambda: r.random() < 0.5, "format": lambda: r.choice(SCHEMAS),
                "keep_alive": lambda: r.choice(KEEP_ALIVES), "think": lambda: r.random() < 0.5})
            body["options"] = self.options()
        elif path == "/api/chat":
            body = self.fields({"model": name}, {
                "messages": self.messages, "stream": lambda: r.random() < 0.5, "format": lambda: r.choice(SCHEMAS),
                "keep_alive": lambda: r.choice(KEEP_ALIVES), "tools": lambda: [self.anything()]})
            body["options"] = self.options()
        elif path == "/api/create":
            body = self.fields({}, {
                "from": lambda: r.choice([MODEL, "fuzz-a", "nope"]), "template": lambda: r.choice(TEMPLATES),
                "system": text, "license": text, "messages": self.messages, "stream": lambda: r.random() < 0.5,
                "parameters": lambda: {r.choice(OPTION_NAMES + ["num_predict"]): self.anything()},
                "files": lambda: {r.choice(["a.gguf", "x.bin"]): r.choice(["sha256:" + "0" * 64, "sha256:xyz"])}})
            # only names that are invalid or ours: the store keeps nothing else
            body["model"] = r.choice(["fuzz-a", "fuzz-b", "", "bad name", "x\ud800", None, 5, ["fuzz-a"]])
        elif path == "/api/show":
            body = self.fields({}, {"model": name, "name": name, "verbose": lambda: r.random() < 0.5})
        else:  # the embedding routes: all-minilm (built from PyPI on first use) or another name
            inputs = lambda: r.choice([text(), [text() for _ in range(r.randrange(4))], self.anything()])  # noqa: E731
            body = self.fields({"model": lambda: r.choice(["all-minilm", "ALL-MINILM:22m", *NAMES])}, {
                "input": inputs, "prompt": text, "truncate": lambda: r.random() < 0.5,
                "dimensions": lambda: r.randint(-5, 500), "keep_alive": lambda: r.choice(KEEP_ALIVES),
                "encoding_format": lambda: r.choice(["float", "base64", "int8"])})
            body["options"] = self.options()
        return path, body

    def encode(self, body: dict[str, Any]) -> bytes:
        data = as_json(body)
        if self.rng.random() < 0.08:  # broken JSON
            return data[: self.rng.randrange(len(data) + 1)]
        return data


# --- hand-made reproducers --------------------------------------------------------------------------------------------

def hostile_ggufs() -> dict[str, bytes]:
    """The hostile GGUF files of tests/hostile_gguf.py under this report's labels, and two more."""
    kvs = bundled_metadata()
    labels = {"nan": "nan-metadata", "bad-token": "invalid-token", "truncated": "truncated",
              "short-token-types": "short-token-types"}
    files = {labels[name]: make(kvs) for name, (make, _) in HOSTILE_GGUFS.items()}
    files["no-weights"] = write_gguf(renamed(kvs, "bench no weights"))
    files["not-gguf"] = b"GGML" + bytes(100)
    return files


def hand_made(engine: Engine, tally: Tally) -> None:
    """The issue's reproducers, each sent once."""
    short = {"temperature": 0, "num_predict": 2}

    def gen(extra: str) -> bytes:
        options = json.dumps(short)
        return f'{{"model": "{MODEL}", "prompt": "Hi", "stream": false, "options": {options}{extra}}}'.encode()

    simple: list[tuple[str, str, str, bytes]] = [
        ("empty enum", "POST", "/api/generate", gen(', "format": {"enum": []}')),
        ("empty anyOf", "POST", "/api/generate", gen(', "format": {"anyOf": []}')),
        ("quote in property", "POST", "/api/chat", as_json({"model": MODEL, "messages": [{"role": "user",
                                                            "content": "Hi"}], "format": {"type": "object",
                                                            "properties": {'a"b': {"type": "string"}}},
                                                            "options": short, "stream": False})),
        ("looping pattern", "POST", "/api/generate", gen(', "format": {"type": "string", "pattern": "^]$"}')),
        ("huge maxItems", "POST", "/api/generate", gen(', "format": {"type": "array", "maxItems": 100000}')),
        ("context -1", "POST", "/api/generate", gen(', "context": [-1]')),
        ("context 99999999", "POST", "/api/generate", gen(', "context": [99999999]')),
        ("context 1.0", "POST", "/api/generate", gen(', "context": [1.0]')),
        ("num_ctx 1", "POST", "/api/generate", gen('').replace(b'"num_predict"', b'"num_ctx": 1, "num_predict"')),
        ("num_ctx 1e9", "POST", "/api/generate",
         gen('').replace(b'"num_predict"', b'"num_ctx": 1000000000, "num_predict"')),
        ("repeat_last_n 2**31-1", "POST", "/api/generate",
         gen('').replace(b'"num_predict"', b'"repeat_last_n": 2147483647, "num_predict"')),
        ("lone surrogate prompt", "POST", "/api/generate",
         b'{"model": "smollm2:135m", "prompt": "\\ud800", "options": {"num_predict": 2}}'),
        ("lone surrogate name", "POST", "/api/generate", b'{"model": "smollm2\\ud800", "prompt": "Hi"}'),
        ("lone surrogate delete", "DELETE", "/api/delete", b'{"model": "x\\ud800"}'),
        ("lone surrogate copy", "POST", "/api/copy", b'{"source": "x\\ud800", "destination": "y"}'),
        ("keep_alive 1e300", "POST", "/api/generate", gen(', "keep_alive": 1e300')),
        ("keep_alive 1e200", "POST", "/api/generate", gen(', "keep_alive": 1e200')),
        ("files number", "POST", "/api/create", b'{"model": "x", "files": {"a.gguf": 5}, "stream": false}'),
        ("license number", "POST", "/api/create", as_json({"model": "x", "from": MODEL, "license": 5})),
        ("60,000 special tokens", "POST", "/api/generate", as_json({
            "model": MODEL, "prompt": "<|im_start|>" * 60_000, "stream": False,
            "options": {"num_predict": 1, "num_ctx": 512}})),
        ("60,000 plain tokens", "POST", "/api/generate", as_json({
            "model": MODEL, "prompt": "hello world " * 30_000, "stream": False,
            "options": {"num_predict": 1, "num_ctx": 512}})),
        ("1.3 MB template", "POST", "/api/create",
         as_json({"model": "x", "from": MODEL, "template": "{{ .System }}x\n" * 90_000, "stream": False})),
    ]
    for label, method, path, data in simple:
        send(engine, tally, label, method, path, data)
    send(engine, tally, "ps after keep_alive", "GET", "/api/ps")

    for label, headers in (("foreign Host", {"Host": "evil.example"}),
                           ("foreign Origin", {"Origin": "https://evil.example", "Content-Type": "text/plain"}),
                           ("local Origin", {"Origin": "http://localhost:3000", "Content-Type": "text/plain"})):
        send(engine, tally, label, "POST", "/api/create", as_json({"model": "x", "from": MODEL, "stream": False}),
             headers=headers)

    template = "{{ range $.Messages }}" * 4 + '{{ if eq .Role "user" }}{{ end }}' + "{{ end }}" * 4
    send(engine, tally, "create range bomb", "POST", "/api/create",
         as_json({"model": "ranges", "from": MODEL, "template": template, "stream": False}))
    chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(48)]
    send(engine, tally, "4 nested ranges x 48 messages", "POST", "/api/chat",
         as_json({"model": "ranges", "messages": chat, "stream": False, "options": short}))

    for label, data in hostile_ggufs().items():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        send(engine, tally, f"upload {label}", "POST", f"/api/blobs/{digest}", data,
             headers={"Content-Type": "application/octet-stream"})
        send(engine, tally, f"create {label}", "POST", "/api/create",
             as_json({"model": f"g-{label}", "files": {"m.gguf": digest}, "stream": False}), timeout=120)
    send(engine, tally, "generate no-weights", "POST", "/api/generate",
         as_json({"model": "g-no-weights", "prompt": "Hi", "stream": False, "options": short}))

    keys = ",".join(f'"k{i:020d}":{i % 10}' for i in range(2_000_000))
    send(engine, tally, "52 MB, 2 M keys", "POST", "/api/generate",
         ('{"model": "smollm2:135m", "options": {' + keys + "}}").encode(), timeout=120)
    del keys

    parts = urlsplit(engine.url)
    sockets = []
    try:
        for i in range(300):
            s = socket.create_connection((parts.hostname, parts.port), timeout=10)
            if i % 2:
                s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(s)
        send(engine, tally, "with 300 idle connections", "POST", "/api/generate", gen(""))
    finally:
        for s in sockets:
            s.close()

    kill_mid_generation(engine, tally)


def kill_mid_generation(engine: Engine, tally: Tally) -> None:
    """kill -9 of the runner while it streams; the stream must end with an error line, the next request work."""
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
            "options": {"temperature": 0, "num_predict": 4000}}
    send(engine, tally, "warm up", "POST", "/api/generate", as_json({**body, "options": {"num_predict": 1}}))
    what = "kill -9 mid-stream"
    try:
        response = requests.post(engine.url + "/api/generate", json=body, stream=True, timeout=60)
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        victim = engine.serving_runner()
        if victim is None:
            tally.add(OUTCOMES[2], f"{what}: no runner with the model loaded was found")
            return
        victim.kill()
        rest = [json.loads(line) for line in lines if line]
        error = rest[-1].get("error", "") if rest else ""
        outcome = OUTCOMES[1] if DOCUMENTED_500.match(error) else OUTCOMES[2]
        tally.add(outcome, f"{what}: last line {rest[-1] if rest else None}")
    except requests.Timeout:
        tally.add(OUTCOMES[3], what)
    except requests.RequestException as exc:
        tally.add(OUTCOMES[4], f"{what}: {exc}")
    send(engine, tally, "after kill -9", "POST", "/api/generate", as_json({**body, "options": {"num_predict": 2}}))


# --- main ------------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--examples", type=int, default=1000, help="fuzzed requests to send (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fuzzer (default 1)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds before a request counts as a hang")
    parser.add_argument("--no-hand-made", action="store_true", help="only the fuzzed requests")
    parser.add_argument("--keep", action="store_true", help="keep the engine's folder (log, store) and print it")
    parser.add_argument("--verbose", action="store_true", help="print every hand-made request and its outcome")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="start the engine with --parallel N and send the fuzzed requests N at a time (default 1)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="robustness-"))
    engine = Engine(folder, ["--parallel", str(args.parallel)])
    started = time.monotonic()
    engine.start()
    probe = Probe(engine)
    probe.start()
    fuzzed, hostile = Tally(), Tally(verbose=args.verbose)
    try:
        fuzzer = Fuzzer(args.seed)
        bodies = []  # made first, in order: the same requests whatever --parallel
        for _ in range(args.examples):
            path, body = fuzzer.request()
            bodies.append((path, fuzzer.encode(body)))

        def fuzz(item: tuple[int, tuple[str, bytes]]) -> None:
            i, (path, data) = item
            send(engine, fuzzed, f"fuzz #{i}", "POST", path, data, timeout=args.timeout)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1} fuzzed requests, {time.monotonic() - started:.0f} s", file=sys.stderr)

        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            list(pool.map(fuzz, enumerate(bodies)))
        if not args.no_hand_made:
            hand_made(engine, hostile)
    finally:
        probe.stop()
        restarts = engine.runner_restarts()
        engine.stop()

    elapsed = time.monotonic() - started
    total = Counter(fuzzed.counts) + Counter(hostile.counts)
    answered = [lat for lat in probe.latencies if lat != float("inf")]
    print(f"robustness: {fuzzed.tried} fuzzed (seed {args.seed}) + {hostile.tried} hand-made requests "
          f"in {elapsed:.0f} s")
    print(f"{'':28}{'fuzzed':>8}{'hand-made':>11}{'total':>8}")
    print(f"{'inputs tried':28}{fuzzed.tried:>8}{hostile.tried:>11}{fuzzed.tried + hostile.tried:>8}")
    for outcome in OUTCOMES:
        print(f"{outcome:28}{fuzzed.counts[outcome]:>8}{hostile.counts[outcome]:>11}{total[outcome]:>8}")
    print(f"{'runner restarts':28}{restarts:>27}")
    print(f"{'engine restarts':28}{engine.starts - 1:>27}")
    if answered:
        p50, p99 = percentile(answered, 50) * 1000, percentile(answered, 99) * 1000
        print(f"/api/version meanwhile: {len(probe.latencies)} asked, {len(probe.latencies) - len(answered)} "
              f"unanswered, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(answered) * 1000:.0f} ms, "
              f"mean {statistics.fmean(answered) * 1000:.1f} ms")
    slowest = sorted(hostile.durations, reverse=True)[:4] + sorted(fuzzed.durations, reverse=True)[:1]
    print("slowest: " + ", ".join(f"{label} {seconds:.1f} s" for seconds, label in slowest))
    for (outcome, answer), count in (fuzzed.reasons + hostile.reasons).most_common():
        print(f"  {count} x {outcome}: {answer}")
    for tally in (fuzzed, hostile):
        for whats in tally.examples.values():
            for what in whats[:2]:
                print(f"  e.g. {what}")
    if args.keep:
        print(f"engine folder (log, store): {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    bad = sum(total[o] for o in OUTCOMES[2:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
