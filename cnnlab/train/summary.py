"""A Keras-style ``model.summary()`` for any PyTorch module.

Counting follows Keras: BatchNorm's moving mean and variance are non-trainable parameters (PyTorch
keeps them as buffers), and PyTorch's ``num_batches_tracked`` counter is not a parameter at all.
Output shapes are printed channels-last, ``(None, H, W, C)``, as a Keras user reads them. The ResNet50
summary of lab part 7 is made by the same functions.
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
    """Parameter counts as Keras reports them: BatchNorm moving mean/variance count as non-trainable."""

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


def traced_shapes(
    network: nn.Module, input_shape: Sequence[int], modules: Sequence[tuple[str, nn.Module]]
) -> list[tuple[str, str]]:
    """(key, Keras-style output shape) of the given modules in the order one eval-mode forward pass of a zero
    image calls them; the network's mode is restored and nothing is computed on a "meta" device."""
    calls: list[tuple[str, str]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, key=key: calls.append((key, _keras_shape(out))))
        for key, module in modules
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
    return calls


def summary_rows(
    network: nn.Module, input_shape: Sequence[int], leaves: Sequence[tuple[str, nn.Module]] | None = None
) -> list[tuple[str, str, str, int]]:
    """(name, Keras type, output shape, params) for each layer, found by one forward pass in eval mode."""
    if leaves is None:
        leaves = list(network.named_children())
    shapes = dict(traced_shapes(network, input_shape, leaves))
    return [(name, _type_name(module), shapes.get(name, "?"), count_params(module).total) for name, module in leaves]


def format_summary(
    network: nn.Module,
    input_shape: Sequence[int],
    title: str = "model",
    leaves: Sequence[tuple[str, nn.Module]] | None = None,
) -> str:
    """The summary table and the three totals as one string."""
    rows = [
        (f"{name} ({kind})", shape, params) for name, kind, shape, params in summary_rows(network, input_shape, leaves)
    ]
    return summary_table(title, rows, count_params(network), min_width=28)


def summary_table(
    title: str, rows: Sequence[tuple[str, str, int]], counts: ParamCounts, min_width: int = 0, notes: Sequence[str] = ()
) -> str:
    """Keras' summary layout: one line per (layer label, output shape, params), then the three totals and notes."""
    width_name = max(min_width, *(len(label) + 2 for label, _, _ in rows))
    line = "=" * (width_name + 40)
    out = [f'Model: "{title}"', line, f"{'Layer (type)':<{width_name}}{'Output Shape':<26}{'Param #':>14}", line]
    out += [f"{label:<{width_name}}{shape:<26}{params:>14,}" for label, shape, params in rows]
    out += [
        line,
        f"Total params: {counts.total:,} ({_megabytes(counts.total)})",
        f"Trainable params: {counts.trainable:,} ({_megabytes(counts.trainable)})",
        f"Non-trainable params: {counts.non_trainable:,} ({_megabytes(counts.non_trainable)})",
        line,
        *notes,
    ]
    return "\n".join(out)


def _megabytes(n: int) -> str:
    size = n * 4
    return f"{size / 2**20:.2f} MB" if size >= 2**20 else f"{size / 2**10:.2f} KB"


def count_layers(network: nn.Module, kind: type[nn.Module] = nn.Conv2d) -> int:
    """How many layers of one kind a network holds (e.g. the conv layers of ResNet50)."""
    return sum(isinstance(m, kind) for m in network.modules())
