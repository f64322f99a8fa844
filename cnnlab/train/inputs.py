"""From the caller's arrays to the batches a network takes: the one adapter behind fit, evaluate, predict,
test-time augmentation and the explanations.

Images arrive as NHWC arrays or tensors. uint8 images stay uint8 on the device (a quarter of the memory)
and are scaled per batch there by a 256-entry table; floats are taken as already scaled. A batch's NHWC
memory is, seen through ``nchw``, a channels_last NCHW tensor, so no copy is made for the network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.core.errors import DataError
from cnnlab.data.arrays import scale_images


@dataclass(frozen=True)
class Preprocessing:
    """How a model's inputs are prepared (as timm's pretrained config says it), saved in the model file.

    ``scale``: "symmetric" (x / 127.5 - 1, the lab's) or "caffe" (Keras' ImageNet way: BGR minus the means);
    ``resize``: how other image sizes are fitted ("stretch" or "crop"); ``features`` and ``image_size``: for
    a head on a frozen backbone, which backbone makes its inputs and from which image size.
    """

    scale: str = "symmetric"
    resize: str = "stretch"
    features: str | None = None
    image_size: int | None = None

    def to_dict(self) -> dict:
        """The fields that are set, as model files store them (files of earlier versions hold the same keys)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise DataError(f"unknown preprocessing keys {sorted(unknown)}; this file needs a newer cnnlab")
        return cls(**values)

    def replace(self, **changes) -> Preprocessing:
        return dataclasses.replace(self, **changes)


SYMMETRIC = Preprocessing()  # x / 127.5 - 1, images stretched to the input size

# uint8 -> float by table lookup, so the device does no arithmetic: the table is scale_images of 0..255.
_SCALE_TABLES = {torch.device("cpu"): torch.from_numpy(scale_images(np.arange(256, dtype=np.uint8)))}


def as_tensor(data) -> torch.Tensor:
    """A tensor view of an array; read-only arrays (memory-mapped caches) are copied first."""
    if isinstance(data, torch.Tensor):
        return data
    array = np.asarray(data)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def device_images(x, device: torch.device, name: str = "x") -> torch.Tensor:
    """NHWC images on the device: uint8 kept as it is, anything else as float32; contiguous NHWC memory."""
    tensor = as_tensor(x)
    if tensor.ndim != 4:
        raise DataError(
            f"{name} must be a batch of images (N, height, width, channels), got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype == torch.uint8:
        return tensor.to(device).contiguous()
    if not tensor.is_floating_point():
        raise DataError(f"{name} must hold uint8 pixels or floats scaled to [-1, 1], got {tensor.dtype}")
    return tensor.to(device, torch.float32).contiguous()


def scale_batch(images: torch.Tensor) -> torch.Tensor:
    """A batch as the network takes it: uint8 scaled to [-1, 1] (scale_images' rule), floats unchanged."""
    if images.dtype != torch.uint8:
        return images
    device = images.device
    if device not in _SCALE_TABLES:
        _SCALE_TABLES[device] = _SCALE_TABLES[torch.device("cpu")].to(device)
    return _SCALE_TABLES[device][images.long()]


def nchw(images: torch.Tensor) -> torch.Tensor:
    """The NCHW view the network takes of NHWC memory (channels_last, no copy)."""
    return images.permute(0, 3, 1, 2)


def class_labels(y, n: int, classes: int, name: str = "y") -> torch.Tensor:
    """Integer labels (N,), (N, 1) or one-hot (N, C) of ``classes`` classes -> int64 tensor, checked."""
    labels = as_tensor(y)
    if labels.ndim == 2 and labels.shape[1] == classes:
        labels = labels.argmax(1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(
            f"{name} must hold one label per image ({n}), as integers or one-hot; got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise DataError(f"{name} holds non-integer values; give class indices 0..{classes - 1} or one-hot rows")
    labels = labels.long()
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{name} has labels outside 0..{classes - 1} (min {int(labels.min())}, max {int(labels.max())})"
        )
    return labels
