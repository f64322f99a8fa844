"""See inside a trained network: learned filters beside Part 1's classical ones, feature maps,
Grad-CAM and saliency maps, and the test images it gets most wrong.

The lab says a CNN learns its filters instead of having an expert design them; these functions show
what was learned and where the network looks. Attribution maps come from captum (Grad-CAM of
Selvaraju et al. 2017, input-gradient saliency of Simonyan et al. 2014): a maintained library whose
only heavy dependency is torch (pytorch-grad-cam needs torchvision, which cnnlab cannot import).

Every function takes a cnnlab ``Model``, the ImageNet ``ResNet50`` or a bare ``nn.Module`` returning
logits. Images are NHWC: uint8 0-255, or floats already scaled to [-1, 1] as the lab has them (for the
ResNet50: RGB 0-255, preprocessed here).
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
from cnnlab.data import scale_images
from cnnlab.errors import ConfigError, DataError
from cnnlab.evaluation import class_labels, confusion_matrix
from cnnlab.plots import image_grid, save_figure, to_display

METHODS = ("gradcam", "saliency")
_METHOD_TITLES = {"gradcam": "Grad-CAM", "saliency": "input-gradient saliency"}
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


# ---------------------------------------------------------------------------------------------- models
def network_of(model) -> nn.Module:
    """The nn.Module inside a cnnlab Model (its ``network``), or the module itself."""
    network = getattr(model, "network", model)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"expected a cnnlab Model or a torch nn.Module, got {type(model).__name__}")
    return network


def _is_resnet(network: nn.Module) -> bool:
    from cnnlab.pretrained import ResNet50

    return isinstance(network, ResNet50)


def class_names_of(model, num_classes: int) -> tuple[str, ...]:
    """The model's class names (ImageNet's for ResNet50); class numbers for a bare network."""
    names = getattr(model, "class_names", None)
    if names and len(names) == num_classes:
        return tuple(names)
    if _is_resnet(network_of(model)):
        from cnnlab.imagenet_classes import IMAGENET_CLASSES

        return tuple(name.replace("_", " ") for _, name in IMAGENET_CLASSES)
    return class_labels(None, num_classes)


def network_input(model, images) -> torch.Tensor:
    """NHWC images (or one HWC image) -> the float NCHW tensor the network takes, on its device."""
    network = network_of(model)
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise DataError(f"expected images shaped (N, height, width, channels), got {array.shape}")
    conv = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and array.shape[3] != conv.in_channels:
        raise DataError(f"the images have {array.shape[3]} channels, the network wants {conv.in_channels} (NHWC)")
    expected = getattr(model, "input_shape", None)
    if expected and not getattr(model, "variable_input_size", True) and array.shape[1:3] != tuple(expected[:2]):
        raise DataError(
            f"the images are {array.shape[1]}x{array.shape[2]} but the model's Flatten layer needs "
            f"{expected[0]}x{expected[1]}; resize them first (cnnlab explain does so)"
        )
    if _is_resnet(network):
        from cnnlab.pretrained import preprocess_input

        array = preprocess_input(array)
    elif array.dtype == np.uint8:
        array = scale_images(array)  # the lab's scaling to [-1, 1], as every cnnlab model was trained
    tensor = torch.tensor(array, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
    return tensor.to(_device(network))


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


@torch.no_grad()
def predict_probabilities(model, images, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, classes) for any model this module takes, in inference mode."""
    network = network_of(model).eval()
    inputs = network_input(model, images)
    chunks = [torch.softmax(network(inputs[i : i + batch_size]).float(), 1) for i in range(0, len(inputs), batch_size)]
    return torch.cat(chunks).cpu().numpy()


# ---------------------------------------------------------------------------------------------- filters
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
    lines = ["| filter | most similar | similarity | colour share | category |", "|---:|---|---:|---:|---|"]
    lines += [f"| {r.index} | {r.best} | {r.similarity:.2f} | {r.colour_share:.2f} | {r.category} |" for r in rows]
    return "\n".join(lines)


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
    return _finish(fig, path)


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


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


# ---------------------------------------------------------------------------------------------- feature maps
def conv_blocks(model) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are the network's conv blocks, in forward order.

    Networks built of blocks (RecipeNet's ConvGroups, ResNet50's bottlenecks: children of an
    nn.Sequential that hold a Conv2d) give those blocks; the lab's flat CNN (conv -> BatchNorm ->
    pool) gives each pooling layer that follows a conv, so every map is after BatchNorm and pooling.
    """
    network = network_of(model)
    blocks = [
        (f"{parent_name}.{name}" if parent_name else name, child)
        for parent_name, parent in network.named_modules()
        if isinstance(parent, nn.Sequential)
        for name, child in parent.named_children()
        if not isinstance(child, nn.Conv2d) and any(isinstance(m, nn.Conv2d) for m in child.modules())
    ]
    if blocks:
        return blocks
    pools, seen_conv = [], False
    for name, module in network.named_modules():
        seen_conv = seen_conv or isinstance(module, nn.Conv2d)
        if seen_conv and isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            pools.append((name, module))
    return pools


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
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------- attribution
def layer_names(model) -> list[str]:
    """Names ``grad_cam`` accepts, in forward order: conv, BatchNorm and pooling layers and conv blocks."""
    network = network_of(model)
    block_names = {name for name, _ in conv_blocks(network)}
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)
    return [name for name, module in network.named_modules() if name in block_names or isinstance(module, kinds)]


def default_layer(model) -> str:
    """The last conv layer (with a kernel larger than 1x1, as 1x1 heads only mix channels), or for a
    network built of blocks the last block, whose output holds that layer after BatchNorm."""
    network = network_of(model)
    blocks = conv_blocks(network)
    if blocks and not isinstance(blocks[-1][1], nn.MaxPool2d | nn.AvgPool2d):
        return blocks[-1][0]
    convs = [(name, m) for name, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(network).__name__} has no Conv2d layer for Grad-CAM; use method 'saliency'")
    spatial = [name for name, m in convs if max(m.kernel_size) > 1]
    return (spatial or [convs[-1][0]])[-1]


def resolve_layer(model, name: str | None) -> tuple[str, nn.Module]:
    """(name, module) of a layer named by the user; unknown names raise a one-line list of valid ones."""
    network = network_of(model)
    name = name or default_layer(network)
    valid = layer_names(network)
    if name not in valid:
        raise ConfigError(f"unknown layer {name!r}; this network's layers are: {', '.join(valid)}")
    return name, network.get_submodule(name)


@dataclass
class Explanation:
    """Attribution maps for a batch: ``maps`` at image size in [0, 1] for display, ``raw`` as computed."""

    method: str
    layer: str | None  # Grad-CAM's layer; None for saliency
    images: np.ndarray  # NHWC floats in [0, 1], as shown
    maps: np.ndarray  # (N, height, width), each scaled to a maximum of 1
    raw: np.ndarray  # Grad-CAM: (N, h, w) at the layer's resolution; saliency: (N, height, width)
    target: np.ndarray  # the class each map explains
    predicted: np.ndarray
    probabilities: np.ndarray  # (N, classes)
    class_names: tuple[str, ...]


def _targets(target, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    chosen = predicted if target is None else np.broadcast_to(np.asarray(target, dtype=np.int64), predicted.shape)
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= num_classes):
        raise ConfigError(f"target classes must be 0..{num_classes - 1}, got {np.unique(chosen).tolist()}")
    return np.array(chosen)


def _normalize(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(1)
    return maps / np.where(peak > 0, peak, 1)[:, None, None]


def explain(model, images, method: str = "gradcam", target=None, layer: str | None = None) -> Explanation:
    """Grad-CAM or saliency maps of ``images`` for ``target`` (default: each image's predicted class).

    ``target`` is one class index for all images or one per image; ``layer`` is Grad-CAM's layer
    name (``layer_names`` lists them; default ``default_layer``).
    """
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "saliency" and layer is not None:
        raise ConfigError("--layer applies to Grad-CAM only; saliency maps are taken at the input")
    network = network_of(model).eval()
    probabilities = predict_probabilities(model, images)
    predicted = probabilities.argmax(1)
    targets = _targets(target, predicted, probabilities.shape[1])
    inputs = network_input(model, images).requires_grad_(True)
    target_tensor = torch.from_numpy(targets).to(inputs.device)
    if method == "gradcam":
        layer, module = resolve_layer(network, layer)
        attribution = LayerGradCam(network, module).attribute(inputs, target_tensor, relu_attributions=True)
        raw = attribution[:, 0].detach()
        upsampled = LayerAttribution.interpolate(attribution.detach(), tuple(inputs.shape[2:]), "bilinear")[:, 0]
    else:
        raw = Saliency(network).attribute(inputs, target_tensor, abs=True).amax(1).detach()  # max over channels
        upsampled = raw
    shown = np.asarray(images)
    return Explanation(
        method,
        layer if method == "gradcam" else None,
        to_display(shown[None] if shown.ndim == 3 else shown),
        _normalize(upsampled.clamp_min(0).cpu().numpy()),
        raw.cpu().numpy(),
        targets,
        predicted,
        probabilities,
        class_names_of(model, probabilities.shape[1]),
    )


def grad_cam(model_or_network, images, target=None, layer: str | None = None) -> Explanation:
    """Grad-CAM: ReLU of the layer's activations weighted by the spatial mean of the class score's gradients."""
    return explain(model_or_network, images, "gradcam", target, layer)


def saliency(model_or_network, images, target=None) -> Explanation:
    """Input-gradient saliency: |d class score / d pixel|, the largest over colour channels."""
    return explain(model_or_network, images, "saliency", target)


def overlay_figure(
    explanation: Explanation,
    path: str | os.PathLike | None = None,
    true_labels=None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
) -> Figure:
    """Each image with its map laid over it (jet, half transparent), titled with the predicted class and
    probability (and the true class when ``true_labels`` is given, the explained class when it differs)."""
    count = len(explanation.maps)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.0 * rows), squeeze=False, layout="constrained")
    names = explanation.class_names
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= count:
            continue
        image = explanation.images[index]
        ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
        ax.imshow(explanation.maps[index], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        predicted = int(explanation.predicted[index])
        lines = [titles[index]] if titles else []
        lines.append(f"{names[predicted]} {explanation.probabilities[index, predicted]:.0%}")
        if true_labels is not None:
            lines.append(f"true: {names[int(np.asarray(true_labels)[index])]}")
        if explanation.target[index] != predicted:
            lines.append(f"map for: {names[int(explanation.target[index])]}")
        ax.set_title("\n".join(lines), fontsize=8)
    where = f" at {explanation.layer}" if explanation.layer else ""
    fig.suptitle(
        f"{_METHOD_TITLES[explanation.method]}{where}: where the class score comes from (red = most)", fontsize=9
    )
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------- mistakes
@dataclass(frozen=True)
class LossRow:
    """One image's cross-entropy loss, with its true and predicted class and their probabilities."""

    index: int
    loss: float
    true: int
    predicted: int
    probability: float  # of the predicted class
    true_probability: float


def top_losses(model, x, y, k: int = 9) -> list[LossRow]:
    """The ``k`` images with the highest loss (-log of the true class's probability), highest first."""
    from cnnlab.evaluation import class_indices

    labels = class_indices(y)
    probabilities = predict_probabilities(model, x)
    if len(labels) != len(probabilities):
        raise DataError(f"{len(probabilities)} images but {len(labels)} labels")
    true_probability = probabilities[np.arange(len(labels)), labels]
    losses = -np.log(np.maximum(true_probability, 1e-12))
    order = np.argsort(-losses, kind="stable")[:k]
    predicted = probabilities.argmax(1)
    return [
        LossRow(
            index=int(i),
            loss=float(losses[i]),
            true=int(labels[i]),
            predicted=int(predicted[i]),
            probability=float(probabilities[i, predicted[i]]),
            true_probability=float(true_probability[i]),
        )
        for i in order
    ]


def most_confused(y_true, y_pred, class_names: Sequence[str] | None = None, k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` most frequent (true class, predicted class, count) mistakes; y_pred may be probabilities."""
    matrix = confusion_matrix(y_true, y_pred, len(class_names) if class_names is not None else None)
    class_names = class_labels(class_names, len(matrix))
    np.fill_diagonal(matrix, 0)
    pairs = [(int(matrix[t, p]), t, p) for t, p in zip(*np.nonzero(matrix), strict=True)]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [(class_names[t], class_names[p], count) for count, t, p in pairs[:k]]


def top_losses_figure(
    x, rows: Sequence[LossRow], class_names: Sequence[str] | None = None, path: str | os.PathLike | None = None
) -> Figure:
    """A gallery of the top-loss images titled predicted / true, loss and the predicted probability."""
    class_names = (
        class_labels(class_names, max(max(r.true, r.predicted) for r in rows) + 1)
        if class_names is None
        else class_names
    )
    titles = [
        f"{class_names[r.predicted]} / {class_names[r.true]}\nloss {r.loss:.2f}, p {r.probability:.2f}" for r in rows
    ]
    images = np.asarray(x)[[r.index for r in rows]]
    return image_grid(images, titles, columns=min(6, max(1, len(rows))), path=path, suptitle="predicted / true")
