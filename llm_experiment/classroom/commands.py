"""``llm-experiment classroom ...``: the instructor's commands (the parser is in :mod:`llm_experiment.cli`).

One SQLite file (``--db``, default ``classroom.sqlite``) holds the roster and the usage log, so a class is one
file to keep and back up; it is readable by its owner only (it holds the key hashes). The commands may run
while the gateway serves from the same file: a student added now can use their key at once.

Exit codes: 0 done, 1 it could not be done (an unknown member, a missing file...), 2 a bad argument.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

from .roster import Roster, RosterError, check_name

ENV_HINT = "Students set OLLAMA_HOST=http://<gateway>:11435 and OLLAMA_API_KEY=<their key>"
WORKER_HINT = "On the worker's machine: llm-experiment worker --queue http://<queue>:5000 --key <this key>"


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _existing(db: str) -> Roster | None:
    """The roster in ``db``, or ``None`` (with a message) if there is no such file yet."""
    if not Path(db).exists():
        print(f"error: no classroom database at {db}: add members first (llm-experiment classroom add-instructor "
              "NAME, add-student NAME, import roster.csv), or give its path with --db", file=sys.stderr)
        return None
    return Roster(db)


def add(args: argparse.Namespace) -> int:
    """``add-student NAME`` / ``add-instructor NAME``: print the new key, once."""
    try:
        check_name(args.name)
    except RosterError as exc:
        return _fail(str(exc), 2)
    roster = Roster(args.db)
    try:
        key = {"instructor": roster.add_instructor, "worker": roster.add_worker,
               "student": roster.add_student}[args.role](args.name)
    except RosterError as exc:
        return _fail(str(exc))
    print(key)
    print(f"{args.role} {args.name} added to {args.db}. Hand this key over now: only its hash is kept, it cannot "
          f"be shown again (`classroom rotate {args.name}` makes a new one). "
          f"{WORKER_HINT if args.role == 'worker' else ENV_HINT}.", file=sys.stderr)
    return 0


def import_csv(args: argparse.Namespace) -> int:
    """``import roster.csv --out keys.csv``: add every student named, write their keys."""
    if not Path(args.csv).is_file():
        return _fail(f"no file {args.csv}: give a CSV with one student name per row (first column)")
    roster = Roster(args.db)
    try:
        count = roster.import_csv(args.csv, args.out, overwrite=args.force)
    except (RosterError, FileExistsError) as exc:
        return _fail(str(exc))
    print(f"added {count} students to {args.db}; their keys are in {args.out} (readable by you only): hand each "
          f"student their own key, then delete the file. {ENV_HINT}.", file=sys.stderr)
    return 0


def revoke(args: argparse.Namespace) -> int:
    """``revoke NAME``: the key stops working at once, also in a running gateway."""
    roster = _existing(args.db)
    if roster is None:
        return 1
    try:
        roster.revoke(args.name)
    except RosterError as exc:
        return _fail(str(exc))
    print(f"revoked the key of {args.name} (`classroom rotate {args.name}` gives them a new one)", file=sys.stderr)
    return 0


def rotate(args: argparse.Namespace) -> int:
    """``rotate NAME``: a new key (the old one stops working); re-admits a revoked member."""
    roster = _existing(args.db)
    if roster is None:
        return 1
    try:
        key = roster.rotate(args.name)
    except RosterError as exc:
        return _fail(str(exc))
    print(key)
    print(f"new key for {args.name}; the old one no longer works", file=sys.stderr)
    return 0


def list_members(args: argparse.Namespace) -> int:
    """``list``: every member, role, since when, and whether their key still works."""
    roster = _existing(args.db)
    if roster is None:
        return 1
    members = roster.list()
    if not members:
        print(f"nobody yet: llm-experiment classroom add-student NAME --db {args.db}", file=sys.stderr)
        return 0
    width = max(len("name"), *(len(m.name) for m in members))
    print(f"{'name':<{width}}  {'role':<10}  {'added':<25}  key")
    for m in members:
        state = "works" if m.revoked is None else f"revoked {m.revoked.isoformat()}"
        print(f"{m.name:<{width}}  {m.role:<10}  {m.created.isoformat():<25}  {state}")
    return 0


def report(args: argparse.Namespace) -> int:
    """``report [--since ISO] [--out usage.csv]``: a summary per student; with ``--out``, every request as CSV."""
    if _existing(args.db) is None:
        return 1
    since = None
    if args.since:
        try:  # naive times are local time; "Z" is UTC (Python 3.10's fromisoformat does not read it)
            since = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", args.since))
        except ValueError:
            return _fail(f"--since {args.since!r} is not an ISO 8601 time, e.g. 2025-03-04 or 2025-03-04T09:00", 2)
    from .usage import UsageLog

    usage = UsageLog(args.db)
    try:
        rows = usage.summary(since)
        if args.out:
            written = usage.report_csv(args.out, since)
            print(f"wrote {written} requests to {args.out}", file=sys.stderr)
    finally:
        usage.close()
    if not rows:
        print("no requests logged" + (f" since {since.isoformat()}" if since else ""), file=sys.stderr)
        return 0
    header = ["student", "requests", "errors", "prompt_tokens", "eval_tokens", "mean_wait_ms", "p95_wait_ms"]
    table = [header] + [[_cell(row[column]) for column in header] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for name, *numbers in table:  # names to the left, numbers to the right
        cells = [name.ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(numbers, widths[1:], strict=True)]
        print("  ".join(cells))
    return 0


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def serve(args: argparse.Namespace) -> int:
    """``serve --upstream URL ...``: run the gateway until Ctrl-C."""
    from .gateway import create_app
    from .gateway import serve as run
    from .policy import Policy, PolicySettings
    from .upstreams import Upstream
    from .usage import UsageLog

    keep_alive: str | int = int(args.keep_alive) if re.fullmatch(r"-?\d+", args.keep_alive) else args.keep_alive
    for flag, value, least in (("--per-student", args.per_student, 1), ("--parallel", args.parallel, 1),
                               ("--max-waiting", args.max_waiting, 0), ("--rpm", args.rpm, 1),
                               ("--tokens-per-hour", args.tokens_per_hour, 1)):
        if value is not None and value < least:
            return _fail(f"{flag} must be at least {least} (got {value})", 2)
    try:
        policy = Policy(PolicySettings(keep_alive=keep_alive, num_predict=args.num_predict, num_ctx=args.num_ctx,
                                       allowed_models=tuple(args.model) if args.model else None))
        upstreams = [Upstream(url, parallel=args.parallel) for url in args.upstream]
    except ValueError as exc:
        return _fail(str(exc), 2)
    roster = Roster(args.db)  # first: a new file gets the roster's owner-only permissions
    if not roster.list():
        print(f"warning: nobody is on the roster in {args.db} yet: add members with `llm-experiment classroom "
              "add-instructor NAME` and `add-student NAME` (they work at once, also while the gateway runs)",
              file=sys.stderr)
    usage = UsageLog(args.db)
    try:
        app = create_app(upstreams, roster, policy, usage, per_student=args.per_student,
                         requests_per_minute=args.rpm, tokens_per_hour=args.tokens_per_hour,
                         max_waiting=args.max_waiting, origins=args.origin or ())
        return run(app, args.host, args.port, log_level=args.log_level)
    finally:
        usage.close()
