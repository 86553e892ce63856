"""The classroom usage log: fast writes from many threads, rows, a per-student summary and a CSV report."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from llm_experiment.classroom.usage import COLUMNS, UsageLog, percentile

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def log(tmp_path: Path):
    with UsageLog(tmp_path / "usage.sqlite") as usage:
        yield usage


def fill(log: UsageLog) -> None:
    log.record("alice", "/api/chat", "smollm2:135m", 200, 30, 10, 500_000_000, 1_000_000, started_at=T0)
    log.record("alice", "/api/generate", "smollm2:135m", 200, 20, 5, 200_000_000, 3_000_000, started_at=T0 + 60)
    log.record("bob", "/v1/chat/completions", "smollm2:135m", 403, started_at=T0 + 120)  # refused: no counts
    log.record("alice", "/api/embed", "all-minilm", 500, 7, None, 1_000, 5_000_000, started_at=T0 + 180)


def test_rows_come_back_in_order_with_utc_times(log: UsageLog) -> None:
    fill(log)
    rows = log.rows()
    assert [r["student"] for r in rows] == ["alice", "alice", "bob", "alice"]
    assert rows[0] == {"started_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "student": "alice",
                       "endpoint": "/api/chat", "model": "smollm2:135m", "status": 200, "prompt_eval_count": 30,
                       "eval_count": 10, "total_duration_ns": 500_000_000, "wait_ns": 1_000_000}
    assert rows[2]["prompt_eval_count"] is None and rows[2]["wait_ns"] is None


def test_since_takes_seconds_or_a_datetime(log: UsageLog) -> None:
    fill(log)
    assert len(log.rows(since=T0 + 60)) == 3
    assert len(log.rows(since=datetime(2026, 1, 1, 0, 2, tzinfo=timezone.utc))) == 2
    assert [s["student"] for s in log.summary(since=T0 + 100)] == ["alice", "bob"]
    assert log.summary(since=T0 + 10_000) == []


def test_started_at_defaults_to_now(log: UsageLog) -> None:
    before = time.time()
    log.record("alice", "/api/tags", None, 200)
    (row,) = log.rows()
    assert before - 1 <= row["started_at"].timestamp() <= time.time() + 1 and row["model"] is None


def test_summary_per_student(log: UsageLog) -> None:
    fill(log)
    alice, bob = log.summary()
    assert alice == {"student": "alice", "requests": 3, "errors": 1, "prompt_tokens": 57, "eval_tokens": 15,
                     "tokens": 72, "mean_wait_ms": 3.0, "p95_wait_ms": 5.0}
    assert bob == {"student": "bob", "requests": 1, "errors": 1, "prompt_tokens": 0, "eval_tokens": 0, "tokens": 0,
                   "mean_wait_ms": None, "p95_wait_ms": None}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0 and percentile(values, 100) == 100.0 and percentile(values, 0) == 1.0
    assert percentile([7.0], 95) == 7.0 and percentile([], 95) is None
    assert percentile([1.0, 2.0, 3.0, 100.0], 95) == 100.0


def test_report_csv_to_a_path_and_to_a_stream(log: UsageLog, tmp_path: Path) -> None:
    fill(log)
    out = tmp_path / "usage.csv"
    assert log.report_csv(out) == 4
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS)
    assert rows[1] == ["2026-01-01T00:00:00.000+00:00", "alice", "/api/chat", "smollm2:135m", "200", "30", "10",
                       "500000000", "1000000"]
    assert rows[3][5:] == ["", "", "", ""]  # unknown counts are empty cells
    stream = io.StringIO()
    assert log.report_csv(stream, since=T0 + 150) == 1
    assert stream.getvalue().splitlines()[1].startswith("2026-01-01T00:03:00.000+00:00,alice,/api/embed")


def test_concurrent_writes_from_threads(log: UsageLog) -> None:
    threads_n, per_thread = 8, 250
    start = threading.Barrier(threads_n)

    def work(i: int) -> None:
        start.wait()
        for j in range(per_thread):
            log.record(f"s{i}", "/api/chat", "smollm2:135m", 200, j, 1, 1000, j * 1000, started_at=T0 + j)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.rows()) == threads_n * per_thread
    summary = log.summary()
    assert [s["requests"] for s in summary] == [per_thread] * threads_n
    assert all(s["prompt_tokens"] == sum(range(per_thread)) for s in summary)
    assert log.dropped == 0


def test_record_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    """A record returns while another connection holds the database locked; the row is written afterwards."""
    path = tmp_path / "usage.sqlite"
    usage = UsageLog(path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        for i in range(100):
            usage.record("alice", "/api/chat", "smollm2:135m", 200, started_at=T0 + i)
        assert time.monotonic() - began < 2  # not waiting on the lock (the writer thread is)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert len(usage.rows()) == 100
    usage.close()


def test_close_writes_what_is_queued_and_the_file_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    usage = UsageLog(path)
    for i in range(50):
        usage.record("alice", "/api/generate", "smollm2:135m", 200, started_at=T0 + i)
    usage.close()
    usage.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        usage.record("alice", "/api/generate", "smollm2:135m", 200)
    assert len(usage.rows()) == 50  # reading still works
    assert len(UsageLog(path).rows()) == 50
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unused_log_closes_without_a_thread(tmp_path: Path) -> None:
    usage = UsageLog(tmp_path / "usage.sqlite")
    assert usage.rows() == [] and usage.summary() == []
    usage.close()
    assert usage._writer is None
