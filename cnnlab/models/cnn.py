"""The lab's CNN (``CNNConfig`` and ``build_cnn``), built layer for layer as the Keras original so
parameter counts match. Its config is registered in ``cnnlab.models.registry`` like every model kind.

Keras defaults carried over on purpose: Glorot-uniform kernels with zero biases, BatchNormalization
with momentum 0.99 (PyTorch's 0.01) and epsilon 1e-3, 'same' padding, 2x2 max pooling that floors.

"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cnnlab.core.errors import ConfigError
from cnnlab.models.registry import ModelConfig, create_model, hwc_shape, register_model
from cnnlab.train.model import Model, check_compile_settings

HEADS = ("flatten", "gap", "fcn")
# The 'flatten' head reads the feature map that an image of at most this shorter side gives (larger maps are
# average-pooled down to it). With the whole map of a 170x256 photo, the one dense layer takes 86,016 inputs
# instead of CIFAR's 2,048; Adam moves every weight by about the learning rate per step, so the logits move
# 42 times further than on CIFAR, saturate, and the test loss reaches 55-82 (issue 23's measurement).
FLATTEN_SIDE = 32
_ACTIVATIONS = {"relu": nn.ReLU, "linear": nn.Identity, None: nn.Identity, "elu": nn.ELU, "gelu": nn.GELU}


def _activation(name: str | None) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(k for k in _ACTIVATIONS if k)}")
    return _ACTIVATIONS[name]()


class Conv2D(nn.Conv2d):
    """Conv2d with a fused activation, like Keras' Conv2D(activation=...): one summary row."""

    def __init__(self, in_channels: int, filters: int, kernel_size: int = 3, activation: str | None = None):
        super().__init__(in_channels, filters, kernel_size, padding="same")
        self.activation = _activation(activation)
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        return self.activation(super().forward(x))


class Dense(nn.Linear):
    """Linear with a fused activation, like Keras' Dense(activation=...)."""

    def __init__(self, in_features: int, units: int, activation: str | None = None):
        super().__init__(in_features, units)
        self.activation = _activation(activation)
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        return self.activation(super().forward(x))


def keras_batchnorm(channels: int, spatial: bool = True) -> nn.Module:
    """BatchNormalization with Keras' momentum (0.99 -> 0.01 in PyTorch terms) and epsilon."""
    return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, eps=1e-3, momentum=0.01)


def check_input_shape(input_shape: Sequence[int], n_conv_layers: int) -> tuple[int, int, int]:
    """Validate (H, W, C) and refuse depths whose pooling would shrink the image below 1x1."""
    height, width, channels = hwc_shape(input_shape)
    if min(height, width) < 2**n_conv_layers:
        raise ConfigError(
            f"{n_conv_layers} conv layers halve a {height}x{width} image {n_conv_layers} times with 2x2 pooling, "
            f"leaving {height // 2**n_conv_layers}x{width // 2**n_conv_layers}; use at most "
            f"{max(min(height, width).bit_length() - 1, 0)} conv layers for this size"
        )
    return height, width, channels


@dataclass(frozen=True)
class CNNConfig(ModelConfig):
    """Every setting of the lab's CNN (build_cnn's keywords): architecture and compile settings."""

    kind: ClassVar[str] = "cnn"
    n_conv_layers: int = 2
    n_filters: int = 16
    n_dense_layers: int = 0
    n_nodes: int = 50
    use_dropout: bool = False
    dropout_rate: float = 0.5
    l2: float = 0.0
    learning_rate: float = 0.01
    optimizer: str = "adam"
    loss: str = "categorical_crossentropy"
    head: str = "flatten"
    flatten_side: int | None = FLATTEN_SIDE

    def __post_init__(self):
        super().__post_init__()
        if self.n_conv_layers < 1 or self.n_filters < 1 or self.n_dense_layers < 0 or self.n_nodes < 1:
            raise ConfigError("need n_conv_layers >= 1, n_filters >= 1, n_dense_layers >= 0 and n_nodes >= 1")
        if not 0 <= self.dropout_rate < 1:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.flatten_side is not None and self.flatten_side < 1:
            raise ConfigError(
                f"flatten_side must be at least 1 (or None: flatten the whole map), got {self.flatten_side}"
            )
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose one of {HEADS}")
        check_input_shape(self.input_shape, self.n_conv_layers)
        check_compile_settings(self.optimizer, self.learning_rate, self.loss, self.l2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CNNConfig:
        """Files written before ``flatten_side`` existed flattened the whole map: they are rebuilt that way."""
        return super().from_dict({"flatten_side": None, **values})

    def build_kwargs(self) -> dict[str, Any]:
        """The settings as build_cnn keywords, leaving out what the data decides (shape and classes)."""
        data_settings = {"input_shape", "num_classes", "class_names"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in data_settings}


# The lab's part-4 runs A-E (architecture only; learning rate 0.01 and Adam as build_cnn's defaults).
LAB_MODELS = {
    "A": CNNConfig(n_conv_layers=2, n_filters=16, n_dense_layers=0),
    "B": CNNConfig(n_conv_layers=2, n_filters=16, n_dense_layers=1, n_nodes=50),
    "C": CNNConfig(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50),
    "D": CNNConfig(n_conv_layers=4, n_filters=16, n_dense_layers=1, n_nodes=50, use_dropout=True),
    "E": CNNConfig(n_conv_layers=2, n_filters=16, n_dense_layers=1, n_nodes=32, use_dropout=True),
}


# The recipes' "model B" of the lab: 4 conv blocks from 16 filters, one dense layer of 50 with dropout.
RECIPE_LAB_MODEL = LAB_MODELS["D"]


# Part 6's carbon sweep: architecture fixed while the training settings vary.
SWEEP_MODEL = CNNConfig(n_conv_layers=2, n_filters=16, n_dense_layers=1, n_nodes=32, use_dropout=True)


# Part 2's memory question: part 4's deepest model (run C), trained with batch 20.
MEMORY_MODEL = LAB_MODELS["C"]


def flatten_pool(config: CNNConfig, height: int, width: int) -> int:
    """The average-pooling window before Flatten: 1 unless the last map's shorter side is larger than an
    image of ``flatten_side`` px would give it (8 px for two conv layers: so never on CIFAR)."""
    if config.flatten_side is None:
        return 1
    side = max(1, config.flatten_side // 2**config.n_conv_layers)
    return max(1, min(height, width) // side)


def build_network(config: CNNConfig) -> nn.Sequential:
    """The bare nn.Sequential of the lab's CNN; it returns logits (softmax lives in loss/predict)."""
    height, width, channels = config.input_shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(config.n_conv_layers):
        filters = config.n_filters * 2**i
        layers[f"conv2d_{i + 1}"] = Conv2D(channels, filters, 3, "relu")
        layers[f"batch_normalization_c{i + 1}"] = keras_batchnorm(filters)
        layers[f"max_pooling2d_{i + 1}"] = nn.MaxPool2d(2)
        channels, height, width = filters, height // 2, width // 2

    if config.head == "fcn":  # 1x1 convolutions play the dense layers' part, so any input size works
        for i in range(config.n_dense_layers):
            layers[f"conv2d_head_{i + 1}"] = Conv2D(channels, config.n_nodes, 1, "relu")
            layers[f"batch_normalization_h{i + 1}"] = keras_batchnorm(config.n_nodes)
            if config.use_dropout:
                layers[f"dropout_{i + 1}"] = nn.Dropout2d(config.dropout_rate)
            channels = config.n_nodes
        layers["conv2d_logits"] = Conv2D(channels, config.num_classes, 1, None)
        layers["global_average_pooling2d"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return nn.Sequential(OrderedDict(layers))

    if config.head == "gap":
        layers["global_average_pooling2d"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        features = channels
    else:
        pool = flatten_pool(config, height, width)
        if pool > 1:  # a fixed window (not adaptive pooling) so the ONNX export takes it
            layers["average_pooling2d"] = nn.AvgPool2d(pool)
            height, width = height // pool, width // pool
        layers["flatten"] = nn.Flatten()
        features = channels * height * width
    for i in range(config.n_dense_layers):
        layers[f"dense_{i + 1}"] = Dense(features, config.n_nodes, "relu")
        layers[f"batch_normalization_d{i + 1}"] = keras_batchnorm(config.n_nodes, spatial=False)
        if config.use_dropout:
            layers[f"dropout_{i + 1}"] = nn.Dropout(config.dropout_rate)
        features = config.n_nodes
    layers["dense_logits"] = Dense(features, config.num_classes, None)
    return nn.Sequential(OrderedDict(layers))


@register_model("cnn")
def _create_cnn(config: CNNConfig, device: str | torch.device | None = "auto") -> Model:
    if config.seed is not None:
        torch.manual_seed(config.seed)
    return Model(
        build_network(config),
        input_shape=config.input_shape,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        loss=config.loss,
        l2=config.l2,
        config=config,
        device=device,
        variable_input_size=config.head != "flatten",
    )


def build_cnn(
    input_shape: Sequence[int] = (32, 32, 3),
    n_conv_layers: int = 2,
    n_filters: int = 16,
    n_dense_layers: int = 0,
    n_nodes: int = 50,
    use_dropout: bool = False,
    dropout_rate: float = 0.5,
    l2: float = 0.0,
    learning_rate: float = 0.01,
    optimizer: str = "adam",
    loss: str = "categorical_crossentropy",
    num_classes: int | None = None,
    head: str = "flatten",
    flatten_side: int | None = FLATTEN_SIDE,
    seed: int | None = 0,
    device: str | torch.device | None = "auto",
    class_names: Sequence[str] | None = None,
) -> Model:
    """Build and compile the lab's CNN: conv blocks (Conv 3x3 -> BatchNorm -> MaxPool 2x2, filters
    doubling), Flatten, dense blocks (Dense relu -> BatchNorm [-> Dropout]), Dense(num_classes) softmax.

    ``head='gap'`` or ``'fcn'`` make a model that accepts other input sizes. ``flatten_side``: images larger
    than this (default 32 px) have their last feature map average-pooled to what such an image gives before
    Flatten (None: Keras' plain Flatten). ``num_classes`` follows
    ``class_names`` when given (else 10). The Keras-like keyword form of
    ``create_model(CNNConfig(...))``; returns a ``Model`` with fit/evaluate/predict/summary.
    """
    config = CNNConfig(
        input_shape=tuple(input_shape),
        n_conv_layers=n_conv_layers,
        n_filters=n_filters,
        n_dense_layers=n_dense_layers,
        n_nodes=n_nodes,
        use_dropout=use_dropout,
        dropout_rate=dropout_rate,
        l2=l2,
        learning_rate=learning_rate,
        optimizer=optimizer,
        loss=loss,
        num_classes=num_classes,
        class_names=None if class_names is None else tuple(class_names),
        head=head,
        flatten_side=flatten_side,
        seed=seed,
    )
    return create_model(config, device)
