"""The classroom gateway's usage log: one row per request, in SQLite, and reports over it.

The instructor's questions after a class: who used the server, how much, and how long did people
wait in the queue? ::

    log = UsageLog("usage.sqlite")
    log.record("alice", "/api/chat", "smollm2:135m", 200, prompt_eval_count=31, eval_count=12,
               total_duration_ns=180_000_000, wait_ns=2_000_000)
    log.summary()      # [{"student": "alice", "requests": 1, "tokens": 43, "p95_wait_ms": 2.0, ...}]
    log.report_csv("usage.csv")
    pandas.DataFrame(log.rows())

Writing: :meth:`UsageLog.record` only puts the row on a queue and returns at once; one writer thread
of the log's own takes the rows off in batches and writes each batch in one transaction
(``executemany``). So any number of threads may record at the same time, a record costs
microseconds, and a slow disk never holds up the gateway's event loop. Reading (:meth:`rows`,
:meth:`summary`, :meth:`report_csv`) first waits for the queued rows and then reads the file: the
gateway calls those in a thread (``await asyncio.to_thread(log.summary)``). Call :meth:`close` at
shutdown; rows still queued are written then. The file is in WAL mode, so ``llm-experiment
classroom`` reports can read it while the gateway writes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

COLUMNS = ("started_at", "student", "endpoint", "model", "status", "prompt_eval_count", "eval_count",
           "total_duration_ns", "wait_ns")
_BATCH = 500  # rows per transaction at most: one commit (one fsync at most) for a burst of requests
_STOP = None  # put on the queue by close()


class UsageLog:
    """The usage log in the SQLite file ``path`` (made on first use)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._lock = threading.Lock()  # guards starting and stopping the writer
        self._writer: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # rows lost to write errors (logged); stays 0 unless the disk fails

    # writing -----------------------------------------------------------------------------------------

    def record(self, student: str, endpoint: str, model: str | None, status: int,
               prompt_eval_count: int | None = None, eval_count: int | None = None,
               total_duration_ns: int | None = None, wait_ns: int | None = None,
               started_at: float | datetime | None = None) -> None:
        """Log one request; returns at once (the row is written by the log's writer thread).

        ``wait_ns`` is the time the request waited in the gateway's queue, ``total_duration_ns`` and the
        counts are Ollama's (``None`` when the request failed before Ollama answered). ``started_at``:
        when the request arrived, as ``time.time()`` seconds or a datetime; default now.
        """
        if started_at is None:
            started_at = time.time()
        elif isinstance(started_at, datetime):
            started_at = started_at.timestamp()  # a naive datetime is taken as local time, as Python does
        row = (float(started_at), student, endpoint, model, int(status), _int(prompt_eval_count),
               _int(eval_count), _int(total_duration_ns), _int(wait_ns))
        with self._lock:
            if self._closed:
                raise RuntimeError("this UsageLog is closed")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_rows, name="usage-log-writer", daemon=True)
                self._writer.start()
            self._queue.put(row)

    def flush(self) -> None:
        """Wait until every row recorded so far is in the file."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the writer thread. Reading still works afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._queue.put(_STOP)
        if writer is not None:
            writer.join()

    def __enter__(self) -> UsageLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_rows(self) -> None:
        """The writer thread: take what is queued, up to a batch, and write it in one transaction."""
        insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        while True:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [row for row in batch if row is not _STOP]
            try:
                if rows:
                    with self._connect() as conn:  # a connection per batch: nothing to go stale between bursts
                        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: no fsync per commit
                        conn.executemany(insert, rows)
            except Exception:  # never die: flush() waits for every row to be taken off the queue
                self.dropped += len(rows)
                log.exception("usage log %s: %d rows not written", self.path, len(rows))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(rows) < len(batch):  # the stop marker: close() was called
                return

    # reading -----------------------------------------------------------------------------------------

    def rows(self, since: float | datetime | None = None) -> list[dict[str, Any]]:
        """Every request logged (since ``since``, if given), oldest first; ``started_at`` as a UTC datetime."""
        return [{**row, "started_at": datetime.fromtimestamp(row["started_at"], timezone.utc)}
                for row in self._select(since)]

    def report_csv(self, out: str | os.PathLike[str] | TextIO, since: float | datetime | None = None) -> int:
        """Write one CSV row per request (since ``since``) to a path or an open text file; returns the count.

        ``started_at`` is written in ISO 8601 UTC, the durations in nanoseconds as Ollama reports them.
        """
        rows = self._select(since)
        with _text_out(out) as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                started = datetime.fromtimestamp(row["started_at"], timezone.utc).isoformat(timespec="milliseconds")
                writer.writerow([started, *(row[c] for c in COLUMNS[1:])])
        return len(rows)

    def summary(self, since: float | datetime | None = None) -> list[dict[str, Any]]:
        """Per student: requests, errors (status 400 and above), tokens, and queue wait (mean, p95) in ms."""
        per_student: dict[str, list[dict[str, Any]]] = {}
        for row in self._select(since):
            per_student.setdefault(row["student"], []).append(row)
        out = []
        for student in sorted(per_student):
            rows = per_student[student]
            prompt = sum(r["prompt_eval_count"] or 0 for r in rows)
            generated = sum(r["eval_count"] or 0 for r in rows)
            waits = sorted(r["wait_ns"] / 1e6 for r in rows if r["wait_ns"] is not None)
            out.append({
                "student": student, "requests": len(rows), "errors": sum(r["status"] >= 400 for r in rows),
                "prompt_tokens": prompt, "eval_tokens": generated, "tokens": prompt + generated,
                "mean_wait_ms": sum(waits) / len(waits) if waits else None, "p95_wait_ms": percentile(waits, 95),
            })
        return out

    def _select(self, since: float | datetime | None) -> list[dict[str, Any]]:
        self.flush()
        query = f"SELECT {', '.join(COLUMNS)} FROM requests"
        args: tuple[float, ...] = ()
        if since is not None:
            query += " WHERE started_at >= ?"
            args = (since.timestamp() if isinstance(since, datetime) else float(since),)
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(query + " ORDER BY started_at, id", args)]

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            with conn:
                yield conn
        finally:
            conn.close()


def percentile(sorted_values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of already sorted values (a value that occurred); None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,          -- seconds since the epoch (time.time())
    student TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    status INTEGER NOT NULL,
    prompt_eval_count INTEGER,
    eval_count INTEGER,
    total_duration_ns INTEGER,
    wait_ns INTEGER                    -- time in the gateway's queue
);
CREATE INDEX IF NOT EXISTS requests_started_at ON requests (started_at);
"""


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


@contextlib.contextmanager
def _text_out(out: str | os.PathLike[str] | TextIO) -> Iterator[TextIO]:
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", newline="", encoding="utf-8") as f:
            yield f
    else:
        yield out
