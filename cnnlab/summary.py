"""A Keras-style ``model.summary()`` for any PyTorch module.

Counting follows Keras: BatchNorm's moving mean and variance are non-trainable parameters (PyTorch
keeps them as buffers), and PyTorch's ``num_batches_tracked`` counter is not a parameter at all.
Output shapes are printed channels-last, ``(None, H, W, C)``, as a Keras user reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

_KERAS_NAMES = {
    "Conv2d": "Conv2D",
    "BatchNorm1d": "BatchNormalization",
    "BatchNorm2d": "BatchNormalization",
    "MaxPool2d": "MaxPooling2D",
    "Linear": "Dense",
    "Dropout2d": "SpatialDropout2D",
    "AdaptiveAvgPool2d": "GlobalAveragePooling2D",
    "ReLU": "Activation",
}


@dataclass
class ParamCounts:
    total: int
    trainable: int
    non_trainable: int


def _own_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable) values held directly by this module."""
    trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters(recurse=False) if not p.requires_grad)
    frozen += sum(
        b.numel() for name, b in module.named_buffers(recurse=False) if name in ("running_mean", "running_var")
    )
    return trainable, frozen


def count_params(module: nn.Module) -> ParamCounts:
    """Total, trainable and non-trainable parameter counts as Keras reports them."""
    trainable = frozen = 0
    for sub in module.modules():
        t, f = _own_counts(sub)
        trainable, frozen = trainable + t, frozen + f
    return ParamCounts(trainable + frozen, trainable, frozen)


def _keras_shape(output) -> str:
    if not isinstance(output, torch.Tensor):
        return "?"
    dims = list(output.shape[1:])
    if len(dims) == 3:  # C, H, W -> H, W, C
        dims = dims[1:] + dims[:1]
    return "(" + ", ".join(["None", *map(str, dims)]) + ")"


def _type_name(module: nn.Module) -> str:
    name = type(module).__name__
    if isinstance(module, nn.Sequential) and any(isinstance(m, nn.AdaptiveAvgPool2d) for m in module):
        return "GlobalAveragePooling2D"
    return _KERAS_NAMES.get(name, name)


def summary_rows(
    network: nn.Module, input_shape: Sequence[int], leaves: Sequence[tuple[str, nn.Module]] | None = None
) -> list[tuple[str, str, str, int]]:
    """(name, Keras type, output shape, params) for each layer, found by one forward pass in eval mode."""
    if leaves is None:
        leaves = list(network.named_children())
    shapes: dict[str, str] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, _keras_shape(out)))
        for name, module in leaves
    ]
    height, width, channels = input_shape
    device = next(network.parameters()).device
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(torch.zeros(1, channels, height, width, device=device))
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    return [(name, _type_name(module), shapes.get(name, "?"), count_params(module).total) for name, module in leaves]


def format_summary(
    network: nn.Module,
    input_shape: Sequence[int],
    title: str = "model",
    leaves: Sequence[tuple[str, nn.Module]] | None = None,
) -> str:
    """The summary table and the three totals as one string."""
    rows = summary_rows(network, input_shape, leaves)
    counts = count_params(network)
    width_name = max(28, *(len(f"{n} ({t})") + 2 for n, t, _, _ in rows))
    line = "=" * (width_name + 40)
    out = [
        f'Model: "{title}"',
        line,
        f"{'Layer (type)':<{width_name}}{'Output Shape':<26}{'Param #':>14}",
        line,
    ]
    for name, kind, shape, params in rows:
        out.append(f"{f'{name} ({kind})':<{width_name}}{shape:<26}{params:>14,}")
    out += [
        line,
        f"Total params: {counts.total:,} ({_megabytes(counts.total)})",
        f"Trainable params: {counts.trainable:,} ({_megabytes(counts.trainable)})",
        f"Non-trainable params: {counts.non_trainable:,} ({_megabytes(counts.non_trainable)})",
        line,
    ]
    return "\n".join(out)


def _megabytes(n: int) -> str:
    size = n * 4
    return f"{size / 2**20:.2f} MB" if size >= 2**20 else f"{size / 2**10:.2f} KB"


def count_layers(network: nn.Module, kind: type[nn.Module] = nn.Conv2d) -> int:
    """How many layers of one kind a network holds (e.g. the conv layers of ResNet50)."""
    return sum(isinstance(m, kind) for m in network.modules())
