"""Keras' ImageNet ResNet50 (ResNet v1, a bias on every conv) as a PyTorch module, with Keras' layer names.

The lab's part 7 compares it with Keras' summary, so the module keeps Keras' structure exactly.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnlab.core.errors import DataError
from cnnlab.models.imagenet_classes import IMAGENET_CLASSES
from cnnlab.train.summary import count_params, summary_table, traced_shapes

INPUT_SIZE = 224
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TOTAL_WEIGHTS = 25_636_712


# Each stage: (Keras stage number, filters of the 1x1/3x3 convs, blocks, stride of its first block).
STAGES = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))


# Keras' own epsilons: the old layer names (conv1, res2a_branch2a) came with the Keras default 1e-3,
# today's names (conv1_conv, conv2_block1_1_conv) with 1.001e-5. TF.js exports state theirs.
LEGACY_EPSILON = 1e-3
MODERN_EPSILON = 1.001e-5


class Add(nn.Module):
    """Keras' Add layer as a module, so the summary lists the residual sums as Keras does."""

    def forward(self, main: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return main + shortcut


class GlobalAveragePooling2D(nn.Module):
    """Mean over height and width: (N, C, H, W) -> (N, C), Keras' layer of the same name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _batchnorm(channels: int, epsilon: float) -> nn.BatchNorm2d:
    # Keras momentum 0.99 keeps 99% of the old moving average; PyTorch's momentum is the new share.
    return nn.BatchNorm2d(channels, eps=epsilon, momentum=0.01)


class Bottleneck(nn.Module):
    """One Keras ResNet50 block: 1x1 -> 3x3 -> 1x1 convs plus a shortcut, with Keras' quirks.

    The stride sits on the first 1x1 conv (ResNet v1 as Keras has it, not v1.5's 3x3); the first block of
    a stage has a projection shortcut (``conv_0``), the others add their input unchanged.
    """

    def __init__(self, in_channels: int, filters: int, stride: int, projection: bool, epsilon: float):
        super().__init__()
        out_channels = 4 * filters
        self.conv_1 = nn.Conv2d(in_channels, filters, 1, stride=stride)
        self.bn_1 = _batchnorm(filters, epsilon)
        self.relu_1 = nn.ReLU()
        self.conv_2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.bn_2 = _batchnorm(filters, epsilon)
        self.relu_2 = nn.ReLU()
        self.conv_3 = nn.Conv2d(filters, out_channels, 1)
        self.bn_3 = _batchnorm(out_channels, epsilon)
        self.conv_0 = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projection else None
        self.bn_0 = _batchnorm(out_channels, epsilon) if projection else None
        self.add = Add()
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.relu_1(self.bn_1(self.conv_1(x)))
        main = self.relu_2(self.bn_2(self.conv_2(main)))
        main = self.bn_3(self.conv_3(main))
        shortcut = x if self.conv_0 is None else self.bn_0(self.conv_0(x))
        return self.out(self.add(main, shortcut))


class ResNet50(nn.Module):
    """Keras' ``ResNet50(weights="imagenet")`` layer for layer; ``forward`` returns logits.

    Input: float (N, 3, 224, 224) after ``preprocess_input`` (BGR, caffe means subtracted). Keras ends in
    a softmax; here ``predict`` applies it, so ``features`` and ``forward`` stay usable for training.
    """

    def __init__(self, epsilon: float = LEGACY_EPSILON, num_classes: int = len(IMAGENET_CLASSES)):
        super().__init__()
        self.epsilon = epsilon
        self.conv1_pad = nn.ZeroPad2d(3)
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2)
        self.conv1_bn = _batchnorm(64, epsilon)
        self.conv1_relu = nn.ReLU()
        self.pool1_pad = nn.ZeroPad2d(1)
        self.pool1_pool = nn.MaxPool2d(3, stride=2)
        blocks: OrderedDict[str, Bottleneck] = OrderedDict()
        in_channels = 64
        for stage, filters, count, stride in STAGES:
            for index in range(1, count + 1):
                first = index == 1
                blocks[f"conv{stage}_block{index}"] = Bottleneck(
                    in_channels, filters, stride if first else 1, projection=first, epsilon=epsilon
                )
                in_channels = 4 * filters
        self.blocks = nn.Sequential(blocks)
        self.avg_pool = GlobalAveragePooling2D()
        self.predictions = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048 pooled activations before the classifier: what transfer learning reuses."""
        x = self.conv1_relu(self.conv1_bn(self.conv1_conv(self.conv1_pad(x))))
        x = self.pool1_pool(self.pool1_pad(x))
        return self.avg_pool(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(self.features(x))


def keras_layer_name(module_path: str) -> str:
    """Today's Keras name of a module: ``blocks.conv2_block1.conv_1`` -> ``conv2_block1_1_conv``."""
    parts = module_path.split(".")
    if parts[0] != "blocks" or len(parts) != 3:
        return module_path
    block, leaf = parts[1], parts[2]
    kind, _, index = leaf.rpartition("_")
    return f"{block}_{index}_{kind}" if index.isdigit() else f"{block}_{leaf}"


_LEGACY_TOP_NAMES = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1", "predictions": "fc1000"}
_LEGACY_BRANCHES = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}


def legacy_layer_name(name: str) -> str:
    """The Keras 2.2 name of a layer (the names in the TF.js export): ``conv2_block1_1_conv`` -> ``res2a_branch2a``."""
    if name in _LEGACY_TOP_NAMES:
        return _LEGACY_TOP_NAMES[name]
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if match is None:
        return name
    stage, block, index, kind = match.groups()
    prefix = "res" if kind == "conv" else "bn"
    return f"{prefix}{stage}{'abcdef'[int(block) - 1]}_branch{_LEGACY_BRANCHES[index]}"


@dataclass(frozen=True)
class ConvCount:
    """Conv2D layers split by path: the lab's "49" counts only the main path."""

    main_path: int
    projection_shortcuts: int

    @property
    def total(self) -> int:
        return self.main_path + self.projection_shortcuts


def count_conv_layers(model: ResNet50) -> ConvCount:
    """Count Conv2D layers, separating the 1x1 projection shortcuts (``conv_0``) from the main path."""
    shortcuts = main = 0
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if path.endswith(".conv_0"):
                shortcuts += 1
            else:
                main += 1
    return ConvCount(main, shortcuts)


_KERAS_TYPES = {
    nn.ZeroPad2d: "ZeroPadding2D",
    nn.Conv2d: "Conv2D",
    nn.BatchNorm2d: "BatchNormalization",
    nn.ReLU: "Activation",
    nn.MaxPool2d: "MaxPooling2D",
    Add: "Add",
    GlobalAveragePooling2D: "GlobalAveragePooling2D",
    nn.Linear: "Dense",
}


def summary(model: ResNet50 | None = None, input_size: int = INPUT_SIZE) -> str:
    """Keras' ``model.summary()`` for the ResNet50: every layer, its output shape and weights, the totals.

    Shapes come from one forward pass of a zero image. Without a model, the architecture alone is summarised
    (on PyTorch's "meta" device: shapes and counts, no weights, no compute).
    """
    if model is None:
        with torch.device("meta"):
            model = ResNet50()
    layers = [
        (f"{keras_layer_name(path)} ({_KERAS_TYPES[type(module)]})", module)
        for path, module in model.named_modules()
        if type(module) in _KERAS_TYPES
    ]
    weights = {label: count_params(module).total for label, module in layers}
    calls = traced_shapes(model, (input_size, input_size, 3), layers)
    rows = [("input_1 (InputLayer)", f"(None, {input_size}, {input_size}, 3)", 0)]
    rows += [(label, shape, weights[label]) for label, shape in calls]
    convs = count_conv_layers(model)
    notes = [
        f"Conv2D layers: {convs.total} = {convs.main_path} on the main path + {convs.projection_shortcuts} "
        "1x1 projection shortcuts (the first block of each stage).",
        f"The name's 50 counts weight layers on the longest path: {convs.main_path} convs + 1 Dense.",
        f"Input: {input_size} x {input_size} x 3 images (Keras: channels-last; here N x 3 x H x W, BGR, "
        "caffe means subtracted).",
    ]
    return summary_table("resnet50", rows, count_params(model), notes=notes)


def preprocess_input(images: np.ndarray) -> np.ndarray:
    """Keras' "caffe" preprocessing: RGB -> BGR, subtract the ImageNet channel means, no scaling.

    Takes RGB values 0-255 shaped (..., 3), channels last; returns float32 of the same shape.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[-1] != 3:
        raise DataError(f"preprocess_input expects RGB images with 3 channels last, got shape {images.shape}")
    return images[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
