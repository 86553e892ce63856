"""The task queue's memory: one SQLite table of tasks, each queued, running, done or failed.

Everything that makes the queue reliable is a few lines of SQL here:

- **persistence**: the tasks live in a file (WAL mode), so a restart of the manager loses nothing;
- **leases**: :meth:`TaskStore.claim` hands a task to one worker for ``lease`` seconds with a fresh secret
  token, in one ``UPDATE ... RETURNING`` inside an immediate transaction, so two workers never get the
  same task; a lease that runs out puts the task back in the queue (or fails it after ``max_attempts``);
- **exactly one result**: :meth:`TaskStore.complete` stores a result only with the task's current token
  and before its lease ends; a late or repeated result changes nothing;
- **fair turns**: each task gets a *turn* when submitted, one after the submitter's previous waiting
  task and never before the turn being served now, and tasks are claimed in turn order. So a student
  who submits fifty tasks gets one in every round, not the next fifty.

Every call opens its own connection: one store is safe from several threads and processes. Times are
Unix seconds (``time.time()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
Outcome = Literal["stored", "duplicate", "refused"]


@dataclass(frozen=True)
class NewTask:
    """What a submitter asks for: a prompt for ``/api/generate``, or ``messages`` for ``/api/chat``."""

    model: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Task:
    """One row of the queue, as stored."""

    id: str
    owner: str
    model: str
    prompt: str | None
    messages: list[dict[str, Any]] | None
    system: str | None
    options: dict[str, Any] | None
    status: str
    attempts: int
    max_attempts: int
    worker: str | None
    lease_token: str | None
    lease_expires: float | None
    result: str | None
    stats: dict[str, Any] | None
    error: str | None
    submitted: float
    started: float | None
    finished: float | None


class TaskStore:
    """Tasks in the SQLite file ``path`` (made on first use, readable by its owner only)."""

    def __init__(self, path: str | os.PathLike[str], *, max_attempts: int = 3):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.path = Path(path)
        self.max_attempts = max_attempts
        new = not self.path.exists()
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            if new:  # prompts and results are the submitters' business only
                os.chmod(self.path, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never wait for the writer
            conn.executescript(_SCHEMA)  # one script, committed by executescript itself

    # submitters --------------------------------------------------------------------------------

    def submit(self, owner: str, tasks: Sequence[NewTask]) -> list[str]:
        """Queue ``tasks`` for ``owner`` (in one transaction: all or none); returns their ids."""
        now = time.time()
        ids = [str(uuid.uuid4()) for _ in tasks]
        with self._transaction() as conn:
            serving = _serving_turn(conn)
            last = conn.execute("SELECT MAX(turn) FROM tasks WHERE owner = ? AND status = 'queued'",
                                (owner,)).fetchone()[0]
            first = serving if last is None else max(serving, last + 1)
            conn.executemany(
                "INSERT INTO tasks (id, owner, model, prompt, messages, system, options, status, attempts,"
                " max_attempts, turn, submitted) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                [(task_id, owner, t.model, t.prompt, _dump(t.messages), t.system, _dump(t.options),
                  self.max_attempts, first + n, now) for n, (task_id, t) in enumerate(zip(ids, tasks, strict=True))])
        return ids

    def pending(self, owner: str) -> int:
        """How many of ``owner``'s tasks are queued or running."""
        with self._transaction() as conn:
            return conn.execute("SELECT COUNT(*) FROM tasks WHERE owner = ? AND status IN ('queued', 'running')",
                                (owner,)).fetchone()[0]

    def get(self, task_id: str) -> Task | None:
        """The task with this id (after returning expired leases to the queue), or ``None``."""
        with self._transaction() as conn:
            _expire_leases(conn, time.time())
            row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def list(self, owner: str | None = None, status: str | None = None, limit: int = 100) -> list[Task]:
        """The newest ``limit`` tasks, oldest first: ``owner``'s only unless ``None``, of one ``status`` if given."""
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT {_COLUMNS} FROM tasks {'WHERE ' + ' AND '.join(where) if where else ''} " \
              "ORDER BY rowid DESC LIMIT ?"
        with self._transaction() as conn:
            _expire_leases(conn, time.time())
            rows = conn.execute(sql, (*params, limit)).fetchall()
        return [_task(row) for row in reversed(rows)]

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        with self._transaction() as conn:
            _expire_leases(conn, time.time())
            found = dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
        return {status: found.get(status, 0) for status in (QUEUED, RUNNING, DONE, FAILED)}

    # workers -----------------------------------------------------------------------------------

    def claim(self, worker: str, lease: float) -> Task | None:
        """Lease the next task in turn order to ``worker`` for ``lease`` seconds, or ``None`` if none waits."""
        now = time.time()
        with self._transaction() as conn:
            _expire_leases(conn, now)
            row = conn.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, worker = ?, lease_token = ?,"
                " lease_expires = ?, started = COALESCE(started, ?)"
                " WHERE id = (SELECT id FROM tasks WHERE status = 'queued' ORDER BY turn, rowid LIMIT 1)"
                f" RETURNING {_COLUMNS}, turn",
                (worker, secrets.token_urlsafe(16), now + lease, now)).fetchone()
            if row is None:
                return None
            conn.execute("INSERT INTO meta (key, value) VALUES ('turn', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)", (row[-1],))
        return _task(row[:-1])

    def heartbeat(self, task_id: str, token: str, lease: float) -> float | None:
        """Extend a live lease to ``lease`` seconds from now; the new expiry, or ``None`` if it had ended."""
        now = time.time()
        with self._transaction() as conn:
            found = conn.execute(
                "UPDATE tasks SET lease_expires = ? WHERE id = ? AND status = 'running' AND lease_token = ?"
                " AND lease_expires >= ?", (now + lease, task_id, token, now)).rowcount
        return now + lease if found else None

    def complete(self, task_id: str, token: str, result: str, stats: dict[str, Any] | None = None) -> Outcome:
        """Store the result of a leased task: ``"stored"``, ``"duplicate"`` (this lease's result is in
        already, nothing changes) or ``"refused"`` (no live lease with this token: nothing is stored)."""
        now = time.time()
        with self._transaction() as conn:
            stored = conn.execute(
                "UPDATE tasks SET status = 'done', result = ?, stats = ?, error = NULL, finished = ?,"
                " lease_expires = NULL WHERE id = ? AND status = 'running' AND lease_token = ? AND lease_expires >= ?",
                (result, _dump(stats), now, task_id, token, now)).rowcount
            if stored:
                return "stored"
            row = conn.execute("SELECT status, lease_token FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return "duplicate" if row == (DONE, token) else "refused"

    def fail(self, task_id: str, token: str, error: str, *, retry: bool = True) -> str | None:
        """A worker could not do its task: back to the queue while attempts remain (and ``retry``), else
        failed with ``error``. Returns the task's new status, or ``None`` if the lease had ended."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                "UPDATE tasks SET status = CASE WHEN ? AND attempts < max_attempts THEN 'queued' ELSE 'failed' END,"
                " error = ?, lease_token = NULL, lease_expires = NULL, worker = NULL,"
                " finished = CASE WHEN ? AND attempts < max_attempts THEN NULL ELSE ? END"
                " WHERE id = ? AND status = 'running' AND lease_token = ? AND lease_expires >= ? RETURNING status",
                (retry, error, retry, now, task_id, token, now)).fetchone()
        return row[0] if row else None

    def release(self, task_id: str, token: str) -> bool:
        """Give a leased task back untouched (a worker stopping): queued again, the attempt not counted."""
        now = time.time()
        with self._transaction() as conn:
            return bool(conn.execute(
                "UPDATE tasks SET status = 'queued', attempts = attempts - 1, lease_token = NULL,"
                " lease_expires = NULL, worker = NULL WHERE id = ? AND status = 'running' AND lease_token = ?"
                " AND lease_expires >= ?", (task_id, token, now)).rowcount)

    # internals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on a connection of its own, taken at once (``BEGIN IMMEDIATE``), so that a
        read followed by a write in it never meets another writer in between."""
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT,
    messages TEXT,          -- JSON: a chat task's messages
    system TEXT,
    options TEXT,           -- JSON
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    worker TEXT,
    lease_token TEXT,
    lease_expires REAL,
    result TEXT,
    stats TEXT,             -- JSON: the worker's timing figures
    error TEXT,
    turn INTEGER NOT NULL,  -- fair order: see the module's docstring
    submitted REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS tasks_by_turn ON tasks (status, turn);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, status);
"""

_COLUMNS = ("id, owner, model, prompt, messages, system, options, status, attempts, max_attempts, worker, "
            "lease_token, lease_expires, result, stats, error, submitted, started, finished")


def _expire_leases(conn: sqlite3.Connection, now: float) -> None:
    """Tasks whose worker went quiet past its lease: back to the queue, or failed when out of attempts."""
    conn.execute(
        "UPDATE tasks SET status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END,"
        " error = 'the lease of worker ' || COALESCE(worker, '?') || ' expired (attempt ' || attempts || ' of '"
        " || max_attempts || ')', lease_token = NULL, lease_expires = NULL, worker = NULL,"
        " finished = CASE WHEN attempts < max_attempts THEN NULL ELSE ? END"
        " WHERE status = 'running' AND lease_expires < ?", (now, now))


def _serving_turn(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'turn'").fetchone()
    return int(row[0]) if row else 0


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _task(row: Sequence[Any]) -> Task:
    values = list(row)
    for index in (4, 6, 14):  # messages, options, stats
        values[index] = _load(values[index])
    return Task(*values)
