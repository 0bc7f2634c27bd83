"""Weights & Biases media for one memorization check: histogram, spectrum, image grid, per-sample table.

Used by :class:`~memcallback.MemorizationMonitor` only when a ``WandbLogger`` is attached; ``wandb`` is
imported inside the functions that need it. :func:`log_media` sends everything in a single ``run.log``
call with ``"trainer/global_step"`` as a key (never W&B's own ``step=``), so the media land on the same
step axis as Lightning's scalars. The keys, under ``prefix``:

- ``mu_histogram``: histogram of every normalized eigenvalue ``mu`` (all samples, all ``k``);
- ``spectrum``: mean ``mu_i`` against ``i`` for the flagged and the unflagged samples;
- ``samples``: a table with one row per sample (statistics, nearest-neighbour distance ratio and copy label);

and only with ``images=True``, since a memorizing model's samples are near copies of its training images:

- ``most_memorized`` (image data ``[C, H, W]``, ``C`` in 1 or 3): the highest-score samples, each above
  its nearest training image when training data is given;
- ``scatter`` (any other data): the samples coloured by score over the training points;
- a thumbnail of each sample in the ``samples`` table (image data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memcallback.measure import names
from memcallback.measure.ground_truth import nearest_neighbours
from memcallback.measure.report import SharpnessReport
from memcallback.measure.sharpness import SharpnessStats

#: What a check sends to W&B besides scalars: nothing, charts (histogram, spectrum, per-sample statistics), or
#: charts and images (generated samples beside their nearest training images, thumbnails, the 2-D scatter).
MEDIA = ("none", "charts", "images")

#: Shown image tiles are upscaled (nearest neighbour) to at least this many pixels per side.
MIN_TILE_SIZE = 32
#: Most samples per row of the ``most_memorized`` grid.
GRID_COLUMNS = 8
#: Most training points drawn behind the scatter (evenly strided subset of larger sets).
MAX_SCATTER_POINTS = 5000


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """Whether per-sample data of this shape is shown as images: ``(C, H, W)`` with ``C`` in ``{1, 3}``."""
    return len(shape) == 3 and shape[0] in (1, 3)


def to_uint8(x: Tensor) -> Tensor:
    """Map data in ``[-1, 1]`` to ``uint8`` pixels in ``[0, 255]`` (values outside are clipped)."""
    return ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def upscale(images: Tensor, min_size: int = MIN_TILE_SIZE) -> Tensor:
    """Repeat pixels of ``[N, C, H, W]`` images by the smallest integer factor making both sides ``>= min_size``."""
    factor = max(1, math.ceil(min_size / min(images.shape[-2:])))
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def image_grid(images: Tensor, nrow: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images in ``[-1, 1]`` into one ``uint8`` picture, row by row.

    Tiles are separated and surrounded by ``pad`` pixels of ``pad_value``; an incomplete last row is
    filled with ``pad_value``.

    Args:
        images: ``[N, C, H, W]`` with ``C`` in ``{1, 3}`` and values in ``[-1, 1]``.
        nrow: tiles per row.
        pad: padding in pixels between and around tiles.
        pad_value: padding colour in data units (``1.0`` is white, ``-1.0`` black).

    Returns:
        ``uint8`` array ``[rows * (H + pad) + pad, nrow * (W + pad) + pad]`` for ``C == 1``, with a trailing
        channel axis of 3 for ``C == 3``.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty [N, C, H, W] batch with C in (1, 3), got {tuple(images.shape)}.")
    if nrow < 1 or pad < 0:
        raise ValueError(f"nrow must be >= 1 and pad >= 0, got nrow={nrow}, pad={pad}.")
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    fill = to_uint8(torch.tensor(pad_value))
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), int(fill), dtype=torch.uint8)
    pixels = to_uint8(images)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top : top + h, left : left + w] = pixels[i]
    out = grid.permute(1, 2, 0).numpy()
    return out[..., 0] if c == 1 else out


def pair_grid(samples: Tensor, partners: Tensor | None, ncol: int = GRID_COLUMNS, pad: int = 1,
              gap: int = 4) -> np.ndarray:
    """Grid of samples with, when given, each partner (e.g. its nearest training image) directly below it.

    Samples fill rows of ``ncol`` (white padding as in :func:`image_grid`); with partners, every row of
    samples is followed by the row of their partners, an incomplete last pair of rows is filled with
    white, and consecutive pairs of rows are set ``gap`` extra white pixels apart.
    """
    ncol = min(ncol, samples.shape[0])
    if partners is None:
        return image_grid(samples, ncol, pad)
    blank = torch.ones_like(samples[:1])
    blocks = []
    for start in range(0, samples.shape[0], ncol):
        fill = blank.expand(max(0, start + ncol - samples.shape[0]), -1, -1, -1)
        tiles = torch.cat([samples[start : start + ncol], fill, partners[start : start + ncol], fill])
        block = image_grid(tiles, ncol, pad)
        if blocks:
            blocks.append(np.full((gap, *block.shape[1:]), 255, dtype=np.uint8))
        blocks.append(block)
    return np.concatenate(blocks)


def log_media(
    run: Any,
    report: SharpnessReport,
    train_data: Tensor | None,
    *,
    step: int,
    prefix: str = names.PREFIX,
    num_images: int = 16,
    images: bool = False,
) -> None:
    """Log the W&B media of one check in a single ``run.log`` call at ``"trainer/global_step" = step``.

    Args:
        run: a ``wandb`` run (``WandbLogger.experiment``) or anything with a compatible ``log(dict)``.
        report: the check's :class:`~memcallback.measure.analysis.SharpnessReport`; its primary timestep is shown.
        train_data: ``[N, *shape]`` training samples for nearest neighbours and the scatter background.
        step: the trainer's global step.
        prefix: namespace of the keys.
        num_images: most memorized samples shown in the image grid.
        images: also log pictures of the samples and of training data (grid or scatter, table thumbnails).
    """
    import wandb

    stats = report.primary
    samples = report.samples.detach().cpu()
    score = stats.memorization_score.detach().float().cpu()
    shape = tuple(samples.shape[1:])
    payload: dict[str, Any] = {"trainer/global_step": step}
    mu = stats.mu.detach().float().cpu().flatten()
    mu = mu[torch.isfinite(mu)]
    if mu.numel():
        payload[f"{prefix}mu_histogram"] = wandb.Histogram(mu.numpy(), num_bins=64)
    payload[f"{prefix}spectrum"] = spectrum_chart(stats)
    if images and is_image_shape(shape):
        payload[f"{prefix}most_memorized"] = most_memorized_image(samples, score, train_data, num_images)
    elif images:
        payload[f"{prefix}scatter"] = wandb.Image(scatter_image(samples, score, train_data),
                                                  caption="samples coloured by memorization score over training data")
    payload[f"{prefix}samples"] = sample_table(report, images=images)
    run.log(payload)


def spectrum_chart(stats: SharpnessStats) -> Any:
    """``wandb.plot.line_series`` of the mean ``mu_i`` against ``i``, flagged and unflagged samples apart."""
    import wandb

    mu = stats.mu.detach().double().cpu()
    flagged = stats.flagged.detach().bool().cpu()
    index = list(range(mu.shape[1]))
    keys, ys = [], []
    for name, mask in (("flagged", flagged), ("not flagged", ~flagged)):
        if mask.any():
            keys.append(name)
            ys.append(mu[mask].mean(dim=0).tolist())
    title = (f"Mean normalized spectrum at t={stats.timestep}, sigma={stats.sigma:.3g} "
             f"({int(flagged.sum())} of {flagged.numel()} flagged)")
    return wandb.plot.line_series(xs=index, ys=ys, keys=keys, title=title, xname="eigenvalue index i (mu_i)")


def most_memorized_image(samples: Tensor, score: Tensor, train_data: Tensor | None, num_images: int) -> Any:
    """``wandb.Image`` of the ``num_images`` highest-score samples, each above its nearest training image."""
    import wandb

    top = score.argsort(descending=True, stable=True)[:num_images]
    shown = samples[top]
    partners = None
    caption = "Most memorized samples, highest score first"
    if train_data is not None:
        reference = train_data.detach()
        _, index = nearest_neighbours(shown.to(reference.device, reference.dtype), reference, k=1)
        partners = reference[index[:, 0]].cpu().to(shown.dtype)
        caption += " (each above its nearest training image)"
    grid = pair_grid(upscale(shown), None if partners is None else upscale(partners))
    caption += ". Scores: " + ", ".join(f"{s:.3f}" for s in score[top].tolist())
    return wandb.Image(grid, caption=caption)


def scatter_image(samples: Tensor, score: Tensor, train_data: Tensor | None) -> np.ndarray:
    """RGB picture of flat samples coloured by score over the training points (matplotlib, Agg canvas).

    The first two coordinates are shown; one-dimensional data is shown against the score. At most
    ``MAX_SCATTER_POINTS`` training points are drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = samples.flatten(1).float().numpy()
    s = score.numpy()
    fig = Figure(figsize=(5, 4.5), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    two_d = x.shape[1] >= 2
    if train_data is not None:
        stride = math.ceil(train_data.shape[0] / MAX_SCATTER_POINTS)
        ref = train_data[::stride].detach().flatten(1).float().cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1] if two_d else np.zeros(len(ref)), s=6, c="0.7", label="training data")
    points = ax.scatter(x[:, 0], x[:, 1] if two_d else s, c=s, s=18, cmap="viridis", vmin=0.0, vmax=1.0,
                        edgecolors="k", linewidths=0.3, label="samples")
    fig.colorbar(points, ax=ax, label="memorization score")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]" if two_d else "score")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def sample_table(report: SharpnessReport, images: bool = False) -> Any:
    """``wandb.Table`` with one row per sample: statistics at the primary timestep, ground truth (distance ratio
    and copy label) and, with ``images`` on image data, a thumbnail."""
    import wandb

    stats = report.primary
    scalars = {name: v.detach().cpu().tolist() for name, v in stats.scalars().items()}
    flagged = stats.flagged.detach().bool().cpu().tolist()
    columns = ["index", "flagged", *scalars]
    labels = report.labels
    if labels is not None:
        columns += ["nn_ratio", "copied"]
        ratio, copied = labels.distance_ratio.detach().cpu().tolist(), labels.copied.detach().bool().cpu().tolist()
    samples = report.samples.detach().cpu()
    images = images and is_image_shape(tuple(samples.shape[1:]))
    if images:
        columns.append("image")
        thumbnails = upscale(samples)
    rows = []
    for i in range(samples.shape[0]):
        row = [i, flagged[i], *(values[i] for values in scalars.values())]
        if labels is not None:
            row += [ratio[i], copied[i]]
        if images:
            row.append(wandb.Image(image_grid(thumbnails[i : i + 1], nrow=1, pad=0)))
        rows.append(row)
    return wandb.Table(columns=columns, data=rows)
