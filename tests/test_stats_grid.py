"""The experiment runner against the engine, the summaries, CSV, and the plot helpers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from llm_experiment.plots import box_by, fit_line, points_by, scatter_with_fit  # noqa: E402
from llm_experiment.stats import load_csv, measure, run_grid, save_csv, summary, to_row  # noqa: E402


def test_measure_sees_what_the_client_sees(url):
    row = measure("Why is the sky blue?", server=url, options={"num_predict": 5, "temperature": 0})
    assert row["eval_count"] == 5 and row["done_reason"] == "length"
    assert 0 < row["ttft_s"] <= row["wall_s"]
    assert row["total_s"] <= row["wall_s"]  # the server's own clock runs inside the client's


@pytest.fixture(scope="module")
def grid_results(engine):
    prompts = {"short": "Hi", "long": "Tell me about the sea. " * 8}
    return run_grid(prompts, grid={"num_predict": [2, 6]}, repeats=2, warmup=1, cold=True, server=engine.url,
                    base_options={"temperature": 0}, fresh_prompts=True, progress=False)


def test_the_grid_has_one_row_per_run_with_flags(grid_results):
    assert len(grid_results) == 2 * 2 * (1 + 2)
    assert grid_results["warmup"].sum() == 4 and grid_results["cold"].sum() == 4
    cut = grid_results[grid_results["done_reason"] == "length"]
    assert (cut["eval_count"] == cut["num_predict"]).all()
    long, short = (grid_results[grid_results["prompt"] == p]["prompt_eval_count"].min() for p in ("long", "short"))
    assert long > short + 30  # fresh prompts: every run evaluates all of its prompt
    cold = grid_results[grid_results["cold"]]
    warm = grid_results[~grid_results["cold"] & ~grid_results["warmup"]]
    assert cold["load_s"].median() > warm["load_s"].median()  # a cold start pays for loading the model


def test_shuffled_runs_come_after_every_warmup_in_an_order_the_seed_repeats(engine):
    def plan(seed):
        table = run_grid({"a": "Hi", "b": "Hello"}, grid={"num_predict": [1, 2]}, repeats=3, warmup=1,
                         shuffle=seed, server=engine.url, base_options={"temperature": 0}, progress=False)
        assert list(table["order"]) == list(range(len(table)))
        assert table["warmup"].iloc[:4].all() and not table["warmup"].iloc[4:].any()  # warm-ups first
        measured = table[~table["warmup"]]
        assert (measured.groupby(["prompt", "num_predict"]).size() == 3).all()  # every combination, 3 times
        return list(zip(measured["prompt"], measured["num_predict"], measured["run"], strict=True))

    first = plan(7)
    assert first == plan(7)  # the seed repeats the order
    assert first != sorted(first, key=lambda r: (r[0], r[1], r[2]))  # and it is not the grouped order
    with pytest.raises(ValueError, match="cold"):
        run_grid({"a": "Hi"}, cold=True, shuffle=1, server=engine.url, progress=False)


def test_summary_leaves_warmups_out(grid_results):
    table = summary(grid_results, by=["prompt", "num_predict"])
    assert (table[("runs", "")] == 2).all()
    assert ("median", "tokens_per_s") in table.columns and ("iqr", "wall_s") in table.columns


def test_csv_round_trip(grid_results, tmp_path):
    save_csv(grid_results, tmp_path / "runs.csv")
    again = load_csv(tmp_path / "runs.csv")
    pd.testing.assert_frame_equal(again, grid_results, check_dtype=False)


def test_plots_are_labelled():
    table = pd.DataFrame([to_row({"prompt_eval_count": n, "prompt_eval_duration": n * 10_000_000, "eval_count": 1,
                                  "eval_duration": 1}) for n in (10, 20, 40)])
    ax, (slope, _) = scatter_with_fit(table, "prompt_eval_count", "prompt_eval_s", xlabel="prompt tokens",
                                      ylabel="prompt evaluation (s)", title="Prompt time grows with its length")
    assert slope == pytest.approx(0.01)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("prompt tokens", "prompt evaluation (s)")
    ax = box_by(table, "eval_count", "prompt_eval_s", xlabel="answer tokens", ylabel="s", title="t")
    assert ax.get_title() == "t"
    ax = points_by(table, "prompt_eval_count", "prompt_eval_s", xlabel="prompt tokens", ylabel="s", title="p")
    assert ax.get_title() == "p" and [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "40"]
    assert fit_line(pd.Series([0, 1, 2]), pd.Series([1, 3, 5])) == pytest.approx((2.0, 1.0))
