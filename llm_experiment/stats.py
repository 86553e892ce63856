"""Timing statistics: the numbers every answer carries, measured, tabulated and summarised.

Every Ollama answer ends with counts and durations (in nanoseconds). This module turns them into
seconds and rates, measures what only the client can see (wall time, time to first token),
runs small experiment grids with repeats, and keeps the results in tidy pandas tables.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .client import post
from .hosts import default_model
from .ndjson import iter_ndjson

NS_PER_S = 1_000_000_000
DURATIONS = ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"]
METRICS = ["total_s", "load_s", "prompt_eval_s", "eval_s", "wait_s", "prompt_tokens_per_s", "tokens_per_s", "ttft_s",
           "wall_s"]


def rate(tokens: int | None, duration_ns: int | None) -> float | None:
    """Tokens per second, or ``None`` when there is nothing to divide (no tokens or zero time)."""
    if not tokens or not duration_ns:
        return None
    return tokens / (duration_ns / NS_PER_S)


def summarize(final: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one answer: durations in seconds, counts, and prompt and decode speeds.

    ``prompt_eval_count`` is the whole prompt and ``prompt_eval_cached_count`` the part the server
    reused from its cache; only the rest, ``prompt_evaluated``, was read in ``prompt_eval_duration``.
    Ollama does not say how much was cached (the embedded engine does): then the cached count is
    ``None`` and every prompt token counts as read, as ``ollama run --verbose`` computes its prompt
    rate, which overstates the speed after a cache hit (measure fresh prompts: ``run_grid(...,
    fresh_prompts=True)``). ``wait`` is the time no part accounts for: mostly waiting for other
    requests on a busy server.
    """
    seconds = {k: (final.get(k) or 0) / NS_PER_S for k in DURATIONS}
    count = final.get("prompt_eval_count") or 0
    reported = final.get("prompt_eval_cached_count")
    cached = reported or 0
    parts = seconds["load_duration"] + seconds["prompt_eval_duration"] + seconds["eval_duration"]
    return {
        **seconds,
        "wait": max(seconds["total_duration"] - parts, 0.0),
        "prompt_eval_count": count,
        "prompt_eval_cached_count": reported,
        "prompt_evaluated": count - cached,
        "eval_count": final.get("eval_count", 0),
        "prompt_tokens_per_s": rate(count - cached, final.get("prompt_eval_duration")),
        "tokens_per_s": rate(final.get("eval_count"), final.get("eval_duration")),
        "done_reason": final.get("done_reason"),
    }


def format_summary(final: Mapping[str, Any]) -> str:
    """A few human lines, for ``generate.py --stats``."""
    s = summarize(final)

    def speed(value: float | None) -> str:
        return f"{value:.1f} tokens/s" if value is not None else "n/a"

    cached_text = "?" if s["prompt_eval_cached_count"] is None else s["prompt_eval_cached_count"]

    return "\n".join([
        f"total     {s['total_duration']:8.3f} s   (done_reason: {s['done_reason']})",
        f"load      {s['load_duration']:8.3f} s",
        f"prompt    {s['prompt_eval_duration']:8.3f} s   {s['prompt_evaluated']:5d} tokens   "
        f"{speed(s['prompt_tokens_per_s'])}   (of {s['prompt_eval_count']}; {cached_text} cached)",
        f"answer    {s['eval_duration']:8.3f} s   {s['eval_count']:5d} tokens   {speed(s['tokens_per_s'])}",
    ])


def to_row(final: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One tidy row: the server's counts, its durations in seconds, the rates, and ``extra`` labels."""
    s = summarize(final)
    return {
        **extra,
        "prompt_eval_count": s["prompt_eval_count"],
        "prompt_eval_cached_count": s["prompt_eval_cached_count"],
        "prompt_evaluated": s["prompt_evaluated"],
        "eval_count": s["eval_count"],
        "total_s": s["total_duration"],
        "load_s": s["load_duration"],
        "prompt_eval_s": s["prompt_eval_duration"],
        "eval_s": s["eval_duration"],
        "wait_s": s["wait"],
        "prompt_tokens_per_s": s["prompt_tokens_per_s"],
        "tokens_per_s": s["tokens_per_s"],
        "done_reason": s["done_reason"],
    }


def measure(prompt: str, *, model: str | None = None, options: Mapping[str, Any] | None = None,
            server: str | None = None, keep_alive: str | int | None = None) -> dict[str, Any]:
    """Run one streamed ``/api/generate`` and return its row, with what the client saw as well.

    ``wall_s`` is the time from sending the request to the last line, ``ttft_s`` the time to the
    first piece of text: the two numbers a user feels, which the server cannot report.
    Raises :class:`OllamaError` when the server is down or does not have the model.
    """
    body: dict[str, Any] = {"model": model or default_model(), "prompt": prompt, "options": dict(options or {})}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    start = time.perf_counter()
    first: float | None = None
    final: dict[str, Any] = {}
    with post("/api/generate", body, server=server, stream=True) as response:
        for obj in iter_ndjson(response):
            if first is None and obj.get("response"):
                first = time.perf_counter()
            if obj.get("done"):
                final = obj
    wall = time.perf_counter() - start
    return to_row(final, wall_s=wall, ttft_s=(first - start) if first is not None else None)


def unload(model: str | None = None, server: str | None = None) -> None:
    """Ask the server to unload ``model`` now (``keep_alive: 0``), so the next request starts cold."""
    post("/api/generate", {"model": model or default_model(), "keep_alive": 0}, server=server, timeout=(5, 60))


def run_grid(prompts: Mapping[str, str], *, grid: Mapping[str, Iterable[Any]] | None = None, repeats: int = 3,
             warmup: int = 1, cold: bool = False, model: str | None = None, server: str | None = None,
             base_options: Mapping[str, Any] | None = None, fresh_prompts: bool = False,
             shuffle: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Measure every combination of ``prompts`` (label -> text) and ``grid`` options, ``repeats`` times.

    ``grid`` maps option names (``num_predict``, ``temperature``, ...) to the values to try. Before
    each combination, ``warmup`` runs load the model and fill caches; they are kept in the table with
    ``warmup=True`` so you can see them, and left out by :func:`summary`. With ``cold=True`` the model is
    unloaded before the first measured run of each combination, which is then marked ``cold=True``.
    Servers reuse the start of the previous prompt (its evaluation is cached); ``fresh_prompts=True``
    begins every prompt with its own run number, so each run evaluates its whole prompt.

    By default the runs go combination by combination. A machine drifts (it warms up, another program
    starts), and in that order a drift looks like a difference between combinations. ``shuffle=<seed>``
    runs every warm-up first, then all measured runs in a random order that the seed repeats, so a drift
    spreads over all combinations. Column ``order`` numbers the runs as they ran.
    """
    if shuffle is not None and cold:
        raise ValueError("cold=True needs the runs in order (the model is unloaded before each combination's "
                         "first run): leave shuffle out")
    grid = {name: list(values) for name, values in (grid or {}).items()}
    combos = []
    for (label, prompt), *values in itertools.product(prompts.items(), *grid.values()):
        combos.append((label, prompt, {**(base_options or {}), **dict(zip(grid, values, strict=True))}))
    plan = [(combo, run) for combo in range(len(combos)) for run in range(-warmup, repeats)]  # grouped order
    if shuffle is not None:
        warmups, measured = [p for p in plan if p[1] < 0], [p for p in plan if p[1] >= 0]
        random.Random(shuffle).shuffle(measured)
        plan = warmups + measured
    rows = []
    for combo, run in plan:
        label, prompt, options = combos[combo]
        is_cold = cold and run == 0
        if is_cold:
            unload(model, server)
        text = f"[{len(rows)}] {prompt}" if fresh_prompts else prompt
        row = measure(text, model=model, options=options, server=server)
        rows.append({"prompt": label, **options, "run": run, "warmup": run < 0, "cold": is_cold,
                     "order": len(rows), **row})
        if progress and (len(rows) % max(1, len(plan) // 5) == 0 or len(rows) == len(plan)):  # a few updates
            print(f"\r{len(rows)}/{len(plan)} runs measured", end="", flush=True)
    if progress:
        print()
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame, by: str | list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """Median and spread (interquartile range) of each metric per group, warm-up runs left out.

    One run is not a measurement: the median resists outliers, and the IQR says how much to trust it.
    """
    measured = results[~results["warmup"]] if "warmup" in results else results
    metrics = [m for m in (metrics or METRICS) if m in measured]
    grouped = measured.groupby(by)[metrics]
    table = pd.concat({"median": grouped.median(), "iqr": grouped.quantile(0.75) - grouped.quantile(0.25)}, axis=1)
    table[("runs", "")] = grouped.size()
    return table


def save_csv(results: pd.DataFrame, path: str | Path) -> None:
    """Write results to CSV (one row per run)."""
    results.to_csv(path, index=False)


def load_csv(path: str | Path) -> pd.DataFrame:
    """Read results written by :func:`save_csv`, with the same column types."""
    table = pd.read_csv(path)
    for column in ("warmup", "cold"):
        if column in table:
            table[column] = table[column].astype(bool)
    return table
