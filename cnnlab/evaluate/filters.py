"""What the first layer learned: its filters matched against classical ones (edges, blurs, colour), and
the feature maps each conv block makes of an image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import ndimage
from torch import nn

from cnnlab.convolution import SOBEL_X, SOBEL_Y, gaussian_kernel
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.tables import markdown_table
from cnnlab.evaluate.explain import conv_blocks, network_input, network_of
from cnnlab.plots import finish_figure, to_display

CATEGORIES = ("edge", "blur", "colour", "other")


# A filter is a colour detector when more than half of its energy (sum of squares) is not shared by all
# input channels: ||W - mean_c(W)||^2 / ||W||^2 > 0.5. A grey filter (the same kernel on R, G and B)
# scores 0, a filter that reads one channel only 2/3, an opponent filter (R minus G) 1.
COLOUR_SHARE = 0.5


# Below this cosine similarity to every classical kernel a filter counts as "other". For 3x3 filters,
# a random kernel reaches 0.7 against the best of the 16 classical ones in about 1 draw in 7;
# random RGB filters have a colour share of 2/3 on average, so compare trained filters with their initialisation.
MATCH_THRESHOLD = 0.7
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
SOBEL_ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)


def first_conv(model) -> tuple[str, nn.Conv2d]:
    """(name, layer) of the first nn.Conv2d in registration order: the lab CNN's conv2d_1, RecipeNet's
    frozen whitening layer, ResNet50's conv1_conv."""
    for name, module in network_of(model).named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError(f"{type(network_of(model)).__name__} has no Conv2d layer, so it has no filters to show")


def classical_filters(shape: tuple[int, int] = (3, 3)) -> dict[str, tuple[str, np.ndarray]]:
    """Part 1's kernels and their relatives at a filter's size: name -> (category, kernel).

    Sobel is steered to eight directions (cos a * SOBEL_X + sin a * SOBEL_Y: 0 deg is SOBEL_X, 90 deg
    SOBEL_Y, 180 deg -SOBEL_X); the Gaussian, box and identity are made at the size, the Sobel and
    Laplacian kernels resized bilinearly. The Laplacian and identity need a centre pixel, so they are
    offered for odd sizes only. Negated blurs and identities are included: a learned filter's sign is arbitrary.
    """
    rows, cols = shape
    gaussian = gaussian_kernel((rows, cols), max(min(rows, cols) / 4, 0.5))
    bank: dict[str, tuple[str, np.ndarray]] = {}
    for angle in SOBEL_ANGLES:
        radians = np.deg2rad(angle)
        steered = np.cos(radians) * SOBEL_X + np.sin(radians) * SOBEL_Y
        bank[f"sobel {angle}°"] = ("edge", _resize_kernel(steered, shape))
    bank["gaussian"] = ("blur", gaussian)
    bank["-gaussian"] = ("blur", -gaussian)
    bank["box"] = ("blur", np.full(shape, 1 / (rows * cols)))
    bank["-box"] = ("blur", np.full(shape, -1 / (rows * cols)))
    if rows % 2 and cols % 2:
        laplacian = _resize_kernel(LAPLACIAN, shape)
        identity = np.zeros(shape)
        identity[rows // 2, cols // 2] = 1
        bank["laplacian"] = ("edge", laplacian)
        bank["-laplacian"] = ("edge", -laplacian)
        bank["identity"] = ("other", identity)
        bank["-identity"] = ("other", -identity)
    return bank


def _resize_kernel(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if kernel.shape == tuple(shape):
        return np.round(kernel, 12)  # steering leaves 1e-16 crumbs where cos/sin should be 0
    factors = (shape[0] / kernel.shape[0], shape[1] / kernel.shape[1])
    return ndimage.zoom(kernel, factors, order=1, grid_mode=False)


@dataclass(frozen=True)
class FilterMatch:
    """One learned filter: its most similar classical kernel and what kind of detector it is."""

    index: int
    best: str  # name of the most similar classical kernel
    similarity: float  # cosine similarity of the grey (channel-mean) kernel with it, -1..1
    colour_share: float  # share of the filter's energy that differs between input channels, 0..1
    category: str  # one of CATEGORIES


def filter_weights(source) -> np.ndarray:
    """(filters, channels, kh, kw) float64 weights from an array, a tensor, a Conv2d or a model's first conv."""
    if isinstance(source, np.ndarray | torch.Tensor):
        weights = source
    elif isinstance(source, nn.Conv2d):
        weights = source.weight
    else:
        weights = first_conv(source)[1].weight
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().float().cpu().numpy()
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 4:
        raise DataError(f"conv weights must be (filters, channels, height, width), got shape {weights.shape}")
    return weights


def match_filters(weights) -> list[FilterMatch]:
    """For each filter, the classical kernel its grey version resembles most (cosine similarity: a
    normalised correlation without mean removal, so flat blur kernels have a defined score) and its
    category: "colour" when the channels differ (COLOUR_SHARE), else the best match's category when
    the similarity reaches MATCH_THRESHOLD, else "other". Takes what ``filter_weights`` takes."""
    weights = filter_weights(weights)
    bank = classical_filters(weights.shape[2:])
    names = list(bank)
    kernels = np.stack([bank[name][1].ravel() for name in names])
    kernels /= np.linalg.norm(kernels, axis=1, keepdims=True)
    grey = weights.mean(1).reshape(len(weights), -1)
    similarity = grey @ kernels.T / np.maximum(np.linalg.norm(grey, axis=1, keepdims=True), 1e-12)
    energy = (weights**2).sum((1, 2, 3))
    colour = ((weights - weights.mean(1, keepdims=True)) ** 2).sum((1, 2, 3)) / np.maximum(energy, 1e-24)
    rows = []
    for index, (scores, share) in enumerate(zip(similarity, colour, strict=True)):
        best = int(np.argmax(scores))
        if share > COLOUR_SHARE:
            category = "colour"
        elif scores[best] >= MATCH_THRESHOLD:
            category = bank[names[best]][0]
        else:
            category = "other"
        rows.append(FilterMatch(index, names[best], float(scores[best]), float(share), category))
    return rows


def summarize_filters(rows: Sequence[FilterMatch]) -> dict[str, int]:
    """How many filters fall in each category, every category listed (zeros included)."""
    return {category: sum(row.category == category for row in rows) for category in CATEGORIES}


def filter_table(rows: Sequence[FilterMatch]) -> str:
    """A Markdown table of the matches, for the report and the notebook."""
    cells = [(r.index, r.best, f"{r.similarity:.2f}", f"{r.colour_share:.2f}", r.category) for r in rows]
    columns = ("filter", "most similar", "similarity", "colour share", "category")
    return markdown_table(cells, columns, align="rlrrl")


def filter_grid(model_or_weights, path: str | os.PathLike | None = None, columns: int = 16) -> Figure:
    """Learned first-layer filters (RGB, then one row per input channel) beside Part 1's Gaussian and
    Sobel kernels; each filter is titled with its category and best classical match."""
    weights = filter_weights(model_or_weights)
    matches = match_filters(weights)
    count, channels = weights.shape[:2]
    columns = min(columns, count)
    bands = -(-count // columns)
    band_rows = channels + (channels == 3)  # an RGB row first when the filters see colour
    fig = plt.figure(figsize=(1.1 * columns + 2.6, 1.25 * bands * band_rows + 0.8), layout="constrained")
    classical_fig, learned_fig = fig.subfigures(1, 2, width_ratios=(2.2, 1.1 * columns))
    _plot_classical(classical_fig, weights.shape[2:])
    axes = learned_fig.subplots(bands * band_rows, columns, squeeze=False)
    scale = np.abs(weights).max() or 1.0
    for index in range(bands * columns):
        band, column = divmod(index, columns)
        cells = axes[band * band_rows : (band + 1) * band_rows, column]
        for ax in cells:
            ax.set_axis_off()
        if index >= count:
            continue
        kernel = weights[index]
        if channels == 3:
            cells[0].imshow(np.transpose(kernel, (1, 2, 0)) / (2 * scale) + 0.5, interpolation="nearest")
        for channel in range(channels):
            cells[channel + (channels == 3)].imshow(
                kernel[channel], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest"
            )
        match = matches[index]
        cells[0].set_title(f"{index}: {match.category}\n{match.best} {match.similarity:.2f}", fontsize=6)
    rows_label = "RGB, then R, G, B" if channels == 3 else f"{channels} input channels"
    learned_fig.suptitle(f"learned first-layer filters ({count}, {rows_label}; red +, blue -)", fontsize=9)
    return finish_figure(fig, path)


def _plot_classical(fig, shape: tuple[int, int]) -> None:
    bank = classical_filters(shape)
    shown = {"Gaussian": bank["gaussian"][1], "Sobel X": bank["sobel 0°"][1], "Sobel Y": bank["sobel 90°"][1]}
    axes = fig.subplots(len(shown), 1)
    for ax, (name, kernel) in zip(axes, shown.items(), strict=True):
        limit = np.abs(kernel).max()
        ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle("Part 1's kernels", fontsize=9)


@dataclass(frozen=True)
class BlockMaps:
    """One conv block's output for one image: its Keras-style shape and its most active channels."""

    name: str
    shape: tuple[int, int, int]  # (height, width, channels), as model.summary() prints it
    channels: tuple[int, ...]  # the most active channels, by mean activation, highest first
    maps: np.ndarray  # (len(channels), height, width)
    mean_activation: tuple[float, ...]


def feature_maps(model, image, channels: int = 8) -> list[BlockMaps]:
    """Run one image (HWC or 1HWC) through the network and keep each conv block's most active channels."""
    network = network_of(model).eval()
    blocks = conv_blocks(network)
    if not blocks:
        raise ConfigError(f"{type(network).__name__} has no conv blocks (conv layers followed by pooling)")
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name, module in blocks
    ]
    try:
        with torch.no_grad():
            network(network_input(model, image)[:1])
    finally:
        for handle in handles:
            handle.remove()
    result = []
    for name, _ in blocks:
        activation = outputs[name][0].float().cpu()
        means = activation.mean((1, 2))
        top = torch.argsort(means, descending=True)[:channels]
        height, width = activation.shape[1:]
        result.append(
            BlockMaps(
                name,
                (height, width, activation.shape[0]),
                tuple(int(c) for c in top),
                activation[top].numpy(),
                tuple(float(means[c]) for c in top),
            )
        )
    return result


def feature_map_figure(image, blocks: Sequence[BlockMaps], path: str | os.PathLike | None = None) -> Figure:
    """The input image, then one row per block: its most active channels, labelled with the block's shape."""
    columns = max(len(block.channels) for block in blocks)
    fig, axes = plt.subplots(len(blocks), columns + 1, figsize=(1.4 * (columns + 1), 1.5 * len(blocks)), squeeze=False)
    picture = to_display(np.asarray(image).reshape(-1, *np.asarray(image).shape[-3:]))[0]
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(picture.squeeze(), cmap="gray" if picture.shape[-1] == 1 else None)
    axes[0, 0].set_title("input", fontsize=8)
    for row, block in enumerate(blocks):
        below_input = row == 0  # the first row's label goes under the input image, the others fill the cell
        axes[row, 0].text(
            0.5,
            -0.15 if below_input else 0.5,
            f"{block.name}\n{block.shape}",
            ha="center",
            va="top" if below_input else "center",
            fontsize=7,
            transform=axes[row, 0].transAxes,
        )
        for column, (channel, fmap) in enumerate(zip(block.channels, block.maps, strict=True), start=1):
            axes[row, column].imshow(fmap, cmap="viridis", interpolation="nearest")
            axes[row, column].set_title(f"ch {channel}", fontsize=7)
    fig.suptitle("feature maps: most active channels per conv block (height, width, channels)", fontsize=9)
    fig.tight_layout()
    return finish_figure(fig, path)
