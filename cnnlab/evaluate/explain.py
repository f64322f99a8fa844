"""Why a model decided: Grad-CAM and saliency maps (captum), and the images it got most wrong."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.arrays import class_labels
from cnnlab.evaluate.metrics import confusion_matrix
from cnnlab.plots import finish_figure, image_grid, to_display
from cnnlab.train.inputs import device_images, nchw, scale_batch

METHODS = ("gradcam", "saliency")
_METHOD_TITLES = {"gradcam": "Grad-CAM", "saliency": "input-gradient saliency"}


def network_of(model) -> nn.Module:
    """The nn.Module inside a cnnlab Model (its ``network``), or the module itself."""
    network = getattr(model, "network", model)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"expected a cnnlab Model or a torch nn.Module, got {type(model).__name__}")
    return network


def _is_resnet(network: nn.Module) -> bool:
    from cnnlab.models.resnet50 import ResNet50

    return isinstance(network, ResNet50)


def class_names_of(model, num_classes: int) -> tuple[str, ...]:
    """The model's class names (ImageNet's for ResNet50); class numbers for a bare network."""
    names = getattr(model, "class_names", None)
    if names and len(names) == num_classes:
        return tuple(names)
    if _is_resnet(network_of(model)):
        from cnnlab.models.imagenet_classes import IMAGENET_CLASSES

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
        from cnnlab.models.resnet50 import preprocess_input

        array = preprocess_input(array)
    # uint8 gets the lab's scaling to [-1, 1], as every cnnlab model was trained; floats are taken as scaled
    return nchw(scale_batch(device_images(array, _device(network)))).contiguous()


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


@torch.no_grad()
def predict_probabilities(model, images, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, classes) for any model this module takes, in inference mode."""
    network = network_of(model).eval()
    inputs = network_input(model, images)
    chunks = [torch.softmax(network(inputs[i : i + batch_size]).float(), 1) for i in range(0, len(inputs), batch_size)]
    return torch.cat(chunks).cpu().numpy()


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
    return finish_figure(fig, path)


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
    from cnnlab.data.arrays import class_indices

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


def central_share(maps: np.ndarray) -> float:
    """Mean share of the maps' weight inside the central half of each side (a quarter of the area)."""
    height, width = maps.shape[1:]
    centre = maps[:, height // 4 : height - height // 4, width // 4 : width - width // 4].sum((1, 2))
    return float(np.mean(centre / np.maximum(maps.sum((1, 2)), 1e-12)))
