"""The lab's CNN, built layer for layer as the Keras original so parameter counts match.

Keras defaults carried over on purpose: Glorot-uniform kernels with zero biases, BatchNormalization
with momentum 0.99 (PyTorch's 0.01) and epsilon 1e-3, 'same' padding, 2x2 max pooling that floors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.training import Model

HEADS = ("flatten", "gap", "fcn")
_ACTIVATIONS = {"relu": nn.ReLU, "linear": nn.Identity, None: nn.Identity, "elu": nn.ELU, "gelu": nn.GELU}


def _activation(name: str | None) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {sorted(k for k in _ACTIVATIONS if k)}"
        )
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
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, channels = (int(v) for v in input_shape)
    if min(height, width) < 2**n_conv_layers:
        raise ConfigError(
            f"{n_conv_layers} conv layers halve a {height}x{width} image {n_conv_layers} times with 2x2 pooling, "
            f"leaving {height // 2**n_conv_layers}x{width // 2**n_conv_layers}; use at most "
            f"{max(min(height, width).bit_length() - 1, 0)} conv layers for this size"
        )
    return height, width, channels


def build_network(
    input_shape: Sequence[int] = (32, 32, 3),
    n_conv_layers: int = 2,
    n_filters: int = 16,
    n_dense_layers: int = 0,
    n_nodes: int = 50,
    use_dropout: bool = False,
    dropout_rate: float = 0.5,
    num_classes: int = 10,
    head: str = "flatten",
    conv_activation: str | None = "relu",
) -> nn.Sequential:
    """The bare nn.Sequential of the lab's CNN; it returns logits (softmax lives in loss/predict)."""
    if n_conv_layers < 1 or n_filters < 1 or n_dense_layers < 0 or n_nodes < 1 or num_classes < 2:
        raise ConfigError(
            "need n_conv_layers >= 1, n_filters >= 1, n_dense_layers >= 0, n_nodes >= 1 and num_classes >= 2"
        )
    if not 0 <= dropout_rate < 1:
        raise ConfigError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {HEADS}")
    height, width, channels = check_input_shape(input_shape, n_conv_layers)

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(n_conv_layers):
        filters = n_filters * 2**i
        layers[f"conv2d_{i + 1}"] = Conv2D(channels, filters, 3, conv_activation)
        layers[f"batch_normalization_c{i + 1}"] = keras_batchnorm(filters)
        layers[f"max_pooling2d_{i + 1}"] = nn.MaxPool2d(2)
        channels, height, width = filters, height // 2, width // 2

    if head == "fcn":  # 1x1 convolutions play the dense layers' part, so any input size works
        for i in range(n_dense_layers):
            layers[f"conv2d_head_{i + 1}"] = Conv2D(channels, n_nodes, 1, "relu")
            layers[f"batch_normalization_h{i + 1}"] = keras_batchnorm(n_nodes)
            if use_dropout:
                layers[f"dropout_{i + 1}"] = nn.Dropout2d(dropout_rate)
            channels = n_nodes
        layers["conv2d_logits"] = Conv2D(channels, num_classes, 1, None)
        layers["global_average_pooling2d"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return nn.Sequential(OrderedDict(layers))

    if head == "gap":
        layers["global_average_pooling2d"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        features = channels
    else:
        layers["flatten"] = nn.Flatten()
        features = channels * height * width
    for i in range(n_dense_layers):
        layers[f"dense_{i + 1}"] = Dense(features, n_nodes, "relu")
        layers[f"batch_normalization_d{i + 1}"] = keras_batchnorm(n_nodes, spatial=False)
        if use_dropout:
            layers[f"dropout_{i + 1}"] = nn.Dropout(dropout_rate)
        features = n_nodes
    layers["dense_logits"] = Dense(features, num_classes, None)
    return nn.Sequential(OrderedDict(layers))


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
    num_classes: int = 10,
    head: str = "flatten",
    seed: int | None = 0,
    device: str | torch.device | None = "auto",
) -> Model:
    """Build and compile the lab's CNN: conv blocks (Conv 3x3 -> BatchNorm -> MaxPool 2x2, filters
    doubling), Flatten, dense blocks (Dense relu -> BatchNorm [-> Dropout]), Dense(num_classes) softmax.

    ``head='gap'`` or ``'fcn'`` make a model that accepts other input sizes. Returns a Keras-like
    ``Model`` with fit/evaluate/predict/summary.
    """
    config = {k: v for k, v in locals().items() if k != "device"}
    config["input_shape"] = list(input_shape)
    if seed is not None:
        torch.manual_seed(seed)
    network = build_network(
        input_shape,
        n_conv_layers,
        n_filters,
        n_dense_layers,
        n_nodes,
        use_dropout,
        dropout_rate,
        num_classes,
        head,
    )
    return Model(
        network,
        input_shape=input_shape,
        optimizer=optimizer,
        learning_rate=learning_rate,
        loss=loss,
        l2=l2,
        config=config,
        device=device,
        variable_input_size=head != "flatten",
    )


def load_model(path, device: str | torch.device | None = "auto") -> Model:
    """Rebuild a model saved by ``Model.save`` (or a run folder's weights.safetensors) with its weights."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if "config" not in metadata:
        raise ConfigError(f"{path} has no cnnlab build config in its metadata; it was not written by Model.save")
    config = json.loads(metadata["config"])
    model = build_cnn(device=device, **config)
    model.network.load_state_dict(load_file(str(path), device=str(model.device)))
    return model
