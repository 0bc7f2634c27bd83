"""The end-of-fit picture of memorization over training, for runs without W&B.

Drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``, no ``pyplot``), so it never
switches the backend of a user's interactive session.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memcallback.measure import names

if TYPE_CHECKING:
    from memcallback.measure.report import SharpnessReport

#: Series of the top panel (memorization measures in [0, 1]), with their legend labels.
RATE_SERIES = {
    "score": "memorization score (mean)",
    "flagged_fraction": "flagged fraction",
    "nn_rate": "nearest-neighbour memorization rate (ground truth)",
    names.LOSS_GAP: "loss gap (training vs held-out images)",
}
DIMENSION_SERIES = {"effective_dim": "effective dimension d_eff (mean)"}
AUROC_SERIES = {"auroc": "AUROC of the score vs ground truth"}


class _Panel(NamedTuple):
    ylabel: str
    series: dict[str, str]  # key -> legend label
    unit: bool  # values are rates in [0, 1]: fixed y range when they stay inside it


def plot_history(
    history: list[dict[str, float]],
    path: Path | str,
    *,
    monitor: str = names.PREFIX + names.SCORE,
    prefix: str = names.PREFIX,
    threshold: float | None = None,
    stopped_step: int | None = None,
) -> Path:
    """Write a PNG of the memorization measures over training.

    Panels share the training-step axis: (a) the memorization score, the flagged fraction and, when present,
    the nearest-neighbour memorization rate and the loss gap; (b) the effective dimension; (c) the AUROC of the
    score against the ground truth, only when some check has a finite one. The monitored quantity (``monitor``)
    is drawn on its panel (added to the top one when it is none of the above) with ``threshold`` as a dashed line,
    and ``stopped_step`` is marked on every panel.

    Args:
        history: one row per check, keys without ``prefix``; each row needs ``"step"``
            (``MemorizationMonitor.history``). A series is drawn through the rows that hold a finite value of it
            (light checks have no probe statistics, failed checks nothing).
        path: output file; parent directories are created.
        monitor: the logged key the stop rule watched (with ``prefix``).
        prefix: namespace stripped from ``monitor`` to find it in the rows.
        threshold: the stop rule's threshold on ``monitor`` (``None``: no line).
        stopped_step: the step at which the rule stopped the run (``None``: not stopped).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: when ``history`` is empty, a row has no ``"step"``, or no row holds anything to plot.
    """
    if not history:
        raise ValueError("history is empty: there is nothing to plot (no memorization check has run).")
    missing = [i for i, row in enumerate(history) if "step" not in row]
    if missing:
        raise ValueError(f"history rows {missing} have no 'step' key; every row needs the training step.")
    rows = sorted(history, key=lambda row: row["step"])
    target = monitor.removeprefix(prefix)

    panels = [_Panel("rate / score", dict(RATE_SERIES), True), _Panel("dimensions", dict(DIMENSION_SERIES), False),
              _Panel("AUROC", dict(AUROC_SERIES), True)]
    if not any(target in panel.series for panel in panels):
        panels[0].series[target] = target
    panels = [panel._replace(series={key: label for key, label in panel.series.items()
                                     if _has_values(rows, key) or key == target}) for panel in panels]
    panels = [panel for panel in panels if panel.series]
    if not panels:
        raise ValueError(f"history has none of the plotted keys {[*RATE_SERIES, *DIMENSION_SERIES, *AUROC_SERIES]} "
                         f"nor {target!r}; pass MemorizationMonitor.history.")

    fig = Figure(figsize=(8, 2.6 * len(panels) + 0.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ylabel, series, unit) in zip(axes, panels, strict=True):
        for key, label in series.items():
            points = [(row["step"], row[key]) for row in rows if _has_values([row], key)]
            ax.plot([step for step, _ in points], [value for _, value in points], marker="o", markersize=3,
                    label=label)
        if target in series and threshold is not None:
            ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"stop threshold on {target}")
        if "auroc" in series:
            ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1, label="chance (AUROC 0.5)")
        if stopped_step is not None:
            ax.axvline(stopped_step, color="tab:red", linestyle=":", linewidth=1.5,
                       label=f"stopped at step {stopped_step}")
        if unit and _within_unit_interval(rows, series):
            ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("training step")
    title = "Memorization over training"
    if stopped_step is not None:
        title += f" (stopped at step {stopped_step})"
    axes[0].set_title(title)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(path)
    return path


def _has_values(rows: list[dict[str, float]], key: str) -> bool:
    return any(isinstance(row.get(key), (int, float)) and math.isfinite(row[key]) for row in rows)


def _within_unit_interval(rows: list[dict[str, float]], series: dict[str, str]) -> bool:
    values = [row[key] for row in rows for key in series if _has_values([row], key)]
    return all(0.0 <= v <= 1.0 for v in values)


def plot_report(report: SharpnessReport, path: Path | str) -> Path:
    """One measurement as a PNG: the per-sample memorization scores (split by the nearest-neighbour label
    when the report has one) and the mean normalized spectrum ``mu_i`` of flagged and other samples.

    Args:
        report: a :class:`~memcallback.measure.analysis.SharpnessReport` (from :func:`memcallback.analyze`).
        path: where to write the PNG; parent folders are created.

    Returns:
        The path written.
    """
    stats = report.primary
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    score = stats.memorization_score.detach().float().cpu()
    bins = [i / 20 for i in range(21)]
    if report.labels is not None:
        copies = report.labels.copied.cpu()
        left.hist(score[~copies].numpy(), bins=bins, alpha=0.7, label=f"novel ({int((~copies).sum())})")
        left.hist(score[copies].numpy(), bins=bins, alpha=0.7, label=f"copies of training images ({int(copies.sum())})")
        left.legend(fontsize=8)
    else:
        left.hist(score.numpy(), bins=bins, alpha=0.8)
    left.set(xlabel="memorization score", ylabel="samples", title=f"{len(score)} samples at t={stats.timestep}")
    mu = stats.mu.detach().float().cpu()
    index = list(range(1, mu.shape[1] + 1))
    for mask, label in ((stats.flagged.cpu(), "flagged"), (~stats.flagged.cpu(), "not flagged")):
        if mask.any():
            right.plot(index, mu[mask].mean(dim=0).numpy(), marker="o", label=f"{label} ({int(mask.sum())})")
    right.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="direction i (flattest first)", ylabel="mean mu_i = 1 + sigma^2 lambda_i",
              title=f"normalized spectrum, sigma={stats.sigma:.3g}")
    right.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
