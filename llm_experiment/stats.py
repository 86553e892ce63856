"""Reading the timing fields of a final answer: nanoseconds into seconds and tokens per second."""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def rate(tokens: int | None, duration_ns: int | None) -> float | None:
    """Tokens per second, or ``None`` when there is nothing to divide (no tokens or zero time)."""
    if not tokens or not duration_ns:
        return None
    return tokens / (duration_ns / NS_PER_S)


def summarize(final: dict[str, Any]) -> dict[str, Any]:
    """The figures of one answer: durations in seconds, counts, and prompt and decode speeds."""
    seconds = {k: (final.get(k) or 0) / NS_PER_S
               for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")}
    return {
        **seconds,
        "prompt_eval_count": final.get("prompt_eval_count", 0),
        "eval_count": final.get("eval_count", 0),
        "prompt_tokens_per_s": rate(final.get("prompt_eval_count"), final.get("prompt_eval_duration")),
        "tokens_per_s": rate(final.get("eval_count"), final.get("eval_duration")),
        "done_reason": final.get("done_reason"),
    }


def format_summary(final: dict[str, Any]) -> str:
    """A few human lines, for ``generate.py --stats``."""
    s = summarize(final)

    def speed(value: float | None) -> str:
        return f"{value:.1f} tokens/s" if value is not None else "n/a"

    return "\n".join([
        f"total     {s['total_duration']:8.3f} s   (done_reason: {s['done_reason']})",
        f"load      {s['load_duration']:8.3f} s",
        f"prompt    {s['prompt_eval_duration']:8.3f} s   {s['prompt_eval_count']:5d} tokens   "
        f"{speed(s['prompt_tokens_per_s'])}",
        f"answer    {s['eval_duration']:8.3f} s   {s['eval_count']:5d} tokens   {speed(s['tokens_per_s'])}",
    ])
