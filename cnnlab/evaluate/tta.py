"""Test-time augmentation: logits averaged over flipped and shifted views of each image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.core.errors import DataError
from cnnlab.models.recipe_net import RecipeEnsemble
from cnnlab.train.feed import is_feed
from cnnlab.train.inputs import as_tensor, device_images, nchw, scale_batch
from cnnlab.train.model import Model


def tta_views(images: torch.Tensor, level: int) -> list[torch.Tensor]:
    """The views TTA averages over (NCHW): the images, then their mirror images (level >= 1), then
    both shifted one pixel up-left and down-right with reflect padding (level 2)."""
    views = [images]
    if level >= 1:
        views.append(images.flip(3))
    if level >= 2:
        padded = F.pad(torch.cat(views), (1, 1, 1, 1), mode="reflect")
        height, width = images.shape[2:]
        for dy, dx in ((0, 0), (2, 2)):
            views.extend(padded[:, :, dy : dy + height, dx : dx + width].chunk(2))
    return views


@torch.no_grad()
def tta_logits(model: Model, x, level: int = 2, batch_size: int = 500) -> torch.Tensor:
    """Mean logits over the TTA views of each image; x is an NHWC array, uint8 or floats in [-1, 1]."""
    images = nchw(device_images(x, model.device))  # scaled per batch below, as the NCHW view
    model.network.eval()
    return torch.cat([_mean_logits(model, images[start : start + batch_size], level)
                      for start in range(0, len(images), batch_size)])  # fmt: skip


def _mean_logits(model: Model, images: torch.Tensor, level: int) -> torch.Tensor:
    batch = scale_batch(images)
    with torch.autocast(model.device.type, dtype=model.amp_dtype, enabled=model.amp_dtype is not None):
        logits = [
            model.network(view.contiguous(memory_format=torch.channels_last)).float()
            for view in tta_views(batch, level)
        ]
    return torch.stack(logits).mean(0)


@torch.no_grad()
def tta_outputs(model: Model, x, y=None, level: int = 2, batch_size: int = 500) -> tuple[torch.Tensor, np.ndarray]:
    """Mean TTA logits and the labels they belong to: of arrays (x, y), or of a feed (a streamed split), whose
    labels come with its batches, so that a file unreadable while streaming drops out of both."""
    if not is_feed(x):
        return tta_logits(model, x, level, batch_size), np.asarray(y).reshape(-1)
    model.network.eval()
    logits, labels = [], []
    for images, batch_labels in x.batches(batch_size):
        logits.append(_mean_logits(model, nchw(images.to(model.device)), level))
        labels.append(batch_labels)
    return torch.cat(logits), torch.cat(labels).numpy()


def evaluate_tta(model: Model, x, y=None, level: int = 2) -> dict[str, float]:
    """Loss (plain cross-entropy of the averaged logits) and accuracy with test-time augmentation, on arrays
    or a feed (``y`` None: the feed brings its labels)."""
    logits, labels = tta_outputs(model, x, y, level)
    labels = as_tensor(labels).reshape(-1).long().to(logits.device)  # as_tensor copies a read-only (cached) array
    if len(labels) != len(logits):
        raise DataError(f"{len(logits)} images but {len(labels)} labels")
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }


def member_accuracies(model: Model, x, y, level: int = 2) -> list[float]:
    """Test accuracy (with TTA) of each member of an ensemble on its own; one entry for a single network."""
    network = model.network
    if not isinstance(network, RecipeEnsemble):
        return [evaluate_tta(model, x, y, level)["accuracy"]]
    alone = [
        Model(member, model.input_shape, num_classes=model.num_classes, device=model.device, cpu_bf16=model.cpu_bf16)
        for member in network.members
    ]
    return [evaluate_tta(member, x, y, level)["accuracy"] for member in alone]
