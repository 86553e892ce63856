"""Plots of timing results: labelled axes with units, and a title that says what the plot shows."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes


def fit_line(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y`` against ``x``."""
    slope, intercept = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(slope), float(intercept)


def scatter_with_fit(results: pd.DataFrame, x: str, y: str, *, xlabel: str, ylabel: str, title: str,
                     ax: Axes | None = None) -> tuple[Axes, tuple[float, float]]:
    """Every run as a point, and the fitted line; returns the axes and ``(slope, intercept)``."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    data = results.dropna(subset=[x, y])
    slope, intercept = fit_line(data[x], data[y])
    ax.scatter(data[x], data[y], alpha=0.6, label="runs")
    xs = np.linspace(data[x].min(), data[x].max(), 50)
    ax.plot(xs, slope * xs + intercept, color="C1", label=f"fit: y = {slope:.3g} x {intercept:+.3g}")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax, (slope, intercept)


def box_by(results: pd.DataFrame, by: str, y: str, *, xlabel: str, ylabel: str, title: str,
           ax: Axes | None = None) -> Axes:
    """The spread of ``y`` over repeats, one box per value of ``by``."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    groups = [(key, group[y].dropna()) for key, group in results.groupby(by)]
    ax.boxplot([values for _, values in groups], tick_labels=[str(key) for key, _ in groups])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return ax


def points_by(results: pd.DataFrame, by: str, y: str, *, xlabel: str, ylabel: str, title: str,
              ax: Axes | None = None) -> Axes:
    """Every run of ``y`` as a point, one column per value of ``by``, and each column's median as a bar.

    For a handful of runs per group, the points themselves say more than a box drawn from five values.
    """
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    groups = [(key, group[y].dropna()) for key, group in results.groupby(by)]
    jitter = np.random.default_rng(0)  # a fixed spread sideways, so points with equal values stay visible
    for position, (_, values) in enumerate(groups):
        xs = position + jitter.uniform(-0.12, 0.12, len(values))
        ax.scatter(xs, values, alpha=0.7, color="C0", label="one run" if position == 0 else None)
        ax.hlines(values.median(), position - 0.25, position + 0.25, color="C1",
                  label="median" if position == 0 else None)
    ax.set_xticks(range(len(groups)), [str(key) for key, _ in groups])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return ax
