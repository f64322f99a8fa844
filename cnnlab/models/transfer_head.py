"""A classifier head on frozen ResNet50 features: standardized 2048 features, then one Dense layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from cnnlab.core.errors import ConfigError
from cnnlab.models.registry import ModelConfig, register_model
from cnnlab.train.inputs import Preprocessing
from cnnlab.train.model import Model, check_compile_settings


@dataclass(frozen=True)
class TransferHeadConfig(ModelConfig):
    """The dense softmax head on ResNet50's pooled features. Its input is a feature vector, seen as a
    1x1 image with ``features`` channels, so fit/predict/save work as for any cnnlab model; the
    images' way to those features (backbone, image size) is in the model's preprocessing."""

    kind: ClassVar[str] = "transfer_head"
    input_shape: tuple[int, int, int] = (1, 1, 2048)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        if self.input_shape[:2] != (1, 1):
            raise ConfigError(f"the transfer head takes (1, 1, features) inputs, got {self.input_shape}")
        check_compile_settings("adam", self.learning_rate, weight_decay=self.weight_decay)


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TransferHead(nn.Module):
    """Standardise the features (train mean and std, kept as buffers), then one linear layer."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.standardize = _Standardize(torch.zeros(features), torch.ones(features))
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardize(self.flatten(x)))


def seeded_head_init(layer: nn.Linear, seed: int | None) -> None:
    """A new classifier head's start: N(0, 0.01) weights from its own seeded generator (independent of the
    global random state, so the same seed gives the same head whatever ran before) and zero biases."""
    generator = torch.Generator().manual_seed(seed or 0)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()


@register_model("transfer_head")
def _create_transfer_head(config: TransferHeadConfig, device="auto") -> Model:
    head = TransferHead(config.input_shape[2], config.num_classes)
    seeded_head_init(head.linear, config.seed)
    preprocessing = Preprocessing(scale="caffe", resize="stretch", features="resnet50", image_size=128)
    return Model(
        head,
        input_shape=config.input_shape,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        config=config,
        device=device,
        preprocessing=preprocessing,
    )
