"""``llm-experiment queue serve`` and ``llm-experiment worker`` (the parsers are in :mod:`llm_experiment.cli`).

Exit codes: 0 stopped cleanly, 1 it could not start (a port in use, no roster), 2 a bad argument.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
def seconds(text: str) -> float:
    """A positive duration as Ollama's variables take it (an argparse type): ``"60s"``, ``"2m"``, ``"1h30m"``,
    ``"500ms"``, or a whole number of seconds."""
    from ..engine.options import DurationError, parse_keep_alive  # Go's duration syntax, as --keep-alive reads it

    try:
        value = parse_keep_alive(text, env=True)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration ({exc}): write e.g. 60s, 2m or 1h") from None
    if value is None or not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration longer than 0: write e.g. 60s, 2m or 1h")
    return value


def serve(args: argparse.Namespace) -> int:
    """``queue serve``: the manager, with keys from the classroom roster (or open access on loopback)."""
    from ..classroom.roster import Roster
    from .manager import create_app
    from .manager import serve as run
    from .store import TaskStore

    if args.open and args.host not in LOOPBACK:
        print(f"error: --open serves anyone without a key, so it only listens on this computer (127.0.0.1), "
              f"not on {args.host}: for other machines, give workers and students keys (llm-experiment "
              "classroom add-worker NAME, add-student NAME) and drop --open", file=sys.stderr)
        return 2
    roster = None
    if not args.open:
        if not Path(args.roster).exists():
            print(f"error: no roster at {args.roster}: add keys first (llm-experiment classroom add-worker NAME, "
                  "add-student NAME, --db FILE), give its path with --roster, or try the queue on this computer "
                  "alone with --open", file=sys.stderr)
            return 1
        roster = Roster(args.roster)
    try:
        store = TaskStore(args.db, max_attempts=args.max_attempts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(create_app(store, roster, lease=args.lease, model=args.model), args.host, args.port,
               log_level=args.log_level)


def work(args: argparse.Namespace) -> int:
    """``worker``: pull tasks until Ctrl-C (once: finish the current tasks; twice, or SIGTERM: give them back)."""
    from .worker import Worker

    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s", stream=sys.stderr)
    worker = Worker(args.queue, args.ollama, key=args.key or os.environ.get("LLM_QUEUE_KEY"),
                    concurrency=args.concurrency, idle_wait=args.idle_wait)

    def interrupt(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and not worker.stopping.is_set():
            print("worker: finishing the current task(s), then stopping; Ctrl-C again to give them back to the "
                  "queue and stop now", file=sys.stderr, flush=True)
            worker.stop()
        else:
            worker.stop(now=True)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    print(f"worker: taking tasks from {worker.queue}, running them on {worker.ollama} ({args.concurrency} at a "
          "time). Ctrl-C to stop.", file=sys.stderr, flush=True)
    worker.run()
    print(f"worker: stopped after {worker.done} result(s)", file=sys.stderr)
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """``queue serve`` and ``worker``, added to the ``llm-experiment`` command's subcommands."""
    queue = commands.add_parser(
        "queue", help="the task queue: a manager that workers behind a firewall pull prompts from",
        description="A task queue for batch jobs: submitters POST prompts to the manager, workers next to a model "
                    "pull them (GET /task), run them on Ollama and post the results; see notebook 10.")
    verbs = queue.add_subparsers(dest="verb", metavar="VERB")
    serve_parser = verbs.add_parser(
        "serve", help="run the manager",
        description="Run the task queue's manager: POST /submit, GET /task, POST /task, GET /result/<id>, GET "
                    "/tasks, POST /task/heartbeat, POST /task/release, GET /health. Tasks are kept in an SQLite "
                    "file, so a restart loses nothing. Keys come from the classroom roster: students and "
                    "instructors submit, workers (classroom add-worker NAME) take tasks. Ctrl-C to stop.")
    serve_parser.add_argument("--db", default="tasks.sqlite", metavar="FILE",
                              help="where the tasks are kept (default: ./tasks.sqlite)")
    serve_parser.add_argument("--roster", default="classroom.sqlite", metavar="FILE",
                              help="the classroom roster holding the keys (default: ./classroom.sqlite)")
    serve_parser.add_argument("--open", action="store_true",
                              help="no keys: anyone may submit and work (only on 127.0.0.1, for trying it alone)")
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                                                                  "computer only; 0.0.0.0 for other machines)")
    serve_parser.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    serve_parser.add_argument("--lease", type=seconds, default=60.0, metavar="DURATION",
                              help="how long a worker holds a task without a heartbeat before it goes back to the "
                                   "queue (default: 60s)")
    serve_parser.add_argument("--max-attempts", type=int, default=3, metavar="N",
                              help="attempts per task before it is marked failed with its last error (default: 3)")
    serve_parser.add_argument("--model", help="model of tasks that name none (default: $LLM_MODEL or smollm2:135m)")
    serve_parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                              help="how much to log on stderr (info: one line per task event)")
    serve_parser.set_defaults(run=serve)
    queue.set_defaults(run=lambda args: (queue.print_help(), 2)[1])

    worker = commands.add_parser(
        "worker", help="pull tasks from a task queue and run them on an Ollama server",
        description="Take tasks from the task queue at --queue, run each on the Ollama server at --ollama (through "
                    "/api/generate, or /api/chat for messages), post the answer with its timing figures. Only "
                    "outgoing connections: it works behind a firewall. Ctrl-C once finishes the current task and "
                    "stops; twice (or SIGTERM) gives it back to the queue at once.")
    worker.add_argument("--queue", required=True, metavar="URL", help="the manager, e.g. http://queue-host:5000")
    worker.add_argument("--ollama", metavar="URL", help="the Ollama server that runs the tasks (default: $OLLAMA_HOST "
                                                        "or http://127.0.0.1:11434); its key, if any, from "
                                                        "$OLLAMA_API_KEY")
    worker.add_argument("--key", help="this worker's key for the queue (default: $LLM_QUEUE_KEY; none for a queue "
                                      "run with --open)")
    worker.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="tasks run at once (default: 1; more only helps if the Ollama server runs requests "
                             "in parallel, OLLAMA_NUM_PARALLEL)")
    worker.add_argument("--idle-wait", type=seconds, default=5.0, metavar="DURATION",
                        help="the longest pause between two looks at an empty queue (default: 5s)")
    worker.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="how much to log on stderr (info: one line per task)")
    worker.set_defaults(run=work)
