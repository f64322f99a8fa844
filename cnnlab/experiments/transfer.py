"""Transfer learning the lab's way: ResNet50 features computed once, then a classifier head trained on them
and folded into a whole ResNet50 classifier."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cnnlab.core.errors import ConfigError
from cnnlab.evaluate.imagenet import imagenet_batch
from cnnlab.models.registry import create_model
from cnnlab.models.resnet50 import ResNet50
from cnnlab.models.resnet50_classifier import MIN_IMAGE_SIZE, ResNet50Config
from cnnlab.models.transfer_head import TransferHeadConfig
from cnnlab.train.model import Model


def extract_features(
    model: ResNet50, images: np.ndarray, size: int = 128, batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """ResNet50's 2048 pooled features (N, 2048) for RGB uint8 images (N, H, W, 3), upscaled to size x size.

    Small CIFAR images are upscaled bilinearly because ImageNet features expect objects tens of pixels
    wide; 224 matches ImageNet, smaller sizes trade accuracy for time (cost grows with size squared).
    """
    device = next(model.parameters()).device
    model.eval()
    features = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc=f"features at {size} px", disable=not progress):
            batch = imagenet_batch(images[start : start + batch_size], device)
            if batch.shape[-2:] != (size, size):
                batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
            features.append(model.features(batch).float().cpu().numpy())
    return np.concatenate(features) if features else np.zeros((0, 2048), np.float32)


def fit_transfer_head(
    features: np.ndarray,
    labels: np.ndarray,
    config: TransferHeadConfig,
    epochs: int = 30,
    image_size: int = 128,
) -> Model:
    """A dense softmax layer on frozen features, trained with Adam on cross-entropy, as a cnnlab Model.

    The features are standardised inside the head (train mean and std) so one learning rate and weight
    decay suit any image size; the whole training takes seconds because the backbone never runs.
    """
    generator = torch.Generator().manual_seed(config.seed or 0)
    model = create_model(config, device="cpu")
    model.preprocessing = model.preprocessing.replace(image_size=image_size)
    head = model.network
    x = torch.tensor(np.asarray(features), dtype=torch.float32)  # a copy: inputs may be read-only memmaps
    y = torch.tensor(np.asarray(labels).reshape(-1), dtype=torch.int64)
    head.standardize.mean.copy_(x.mean(0))
    head.standardize.std.copy_(x.std(0) + 1e-6)
    head.train()
    optimizer = model.optimizer
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad()
            F.cross_entropy(head(x[batch]), y[batch]).backward()
            optimizer.step()
    head.eval()
    return model


def train_linear_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int = 10,
    epochs: int = 30,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """The trained head network of ``fit_transfer_head`` (features (N, F) in, logits out)."""
    config = TransferHeadConfig(
        input_shape=(1, 1, np.shape(features)[1]),
        num_classes=num_classes,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        seed=seed,
    )
    return fit_transfer_head(features, labels, config, epochs).network


def head_accuracy(head: nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose arg-max class is the label."""
    with torch.inference_mode():
        predicted = head(torch.tensor(np.asarray(features), dtype=torch.float32)).argmax(1).numpy()
    return float((predicted == np.asarray(labels).reshape(-1)).mean())


@dataclass(frozen=True)
class TransferResult:
    """Accuracy and cost of a frozen ResNet50 plus a trained dense head."""

    size: int
    n_train: int
    n_test: int
    train_accuracy: float
    test_accuracy: float
    feature_seconds: float
    head_seconds: float
    model: Model | None = None  # the whole classifier (photos in), to save (Model.save) and reload (load_model)

    @property
    def images_per_second(self) -> float:
        return (self.n_train + self.n_test) / self.feature_seconds if self.feature_seconds else float("nan")


def fold_head(classifier: Model, head: Model) -> None:
    """Put a trained TransferHead into the classifier's Dense layer: its standardisation (x - mean) / std
    folds into the weights, W' = W / std and b' = b - W' mean, so the classifier needs no extra layer."""
    standardize, linear = head.network.standardize, head.network.linear
    with torch.no_grad():
        weight = linear.weight / standardize.std
        target = classifier.network.head
        target.weight.copy_(weight.to(target.weight.device))
        target.bias.copy_((linear.bias - weight @ standardize.mean).to(target.bias.device))


def transfer_learning(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    size: int = 128,
    epochs: int = 30,
    batch_size: int = 32,
    progress: bool = True,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    weights=None,
    device="auto",
    pretrained: bool = True,
) -> TransferResult:
    """A ResNet50 classifier with a frozen body: its features computed once (kept in memory), the dense
    head trained on them and folded into the whole model, and both steps timed.

    ``size`` is the shorter side the images are resized to; ``weights`` the ImageNet file (default:
    $CNNLAB_RESNET50_WEIGHTS). ``result.model`` takes images, so predict, evaluate, export and explain use it.
    """
    if size < MIN_IMAGE_SIZE:
        raise ConfigError(f"size {size} is too small: ResNet50 halves the image 5 times; use 32 or more (e.g. 128)")
    num_classes = None if class_names else int(max(np.max(y_train), np.max(y_test))) + 1
    classifier = create_model(
        ResNet50Config(
            input_shape=np.shape(x_train)[1:], num_classes=num_classes, class_names=class_names, seed=seed,
            image_size=size, train_from="head", weights=weights, pretrained=pretrained,
        ),
        device,
    )  # fmt: skip
    started = time.perf_counter()
    train_features = classifier.features(x_train, batch_size, progress).cpu().numpy()
    test_features = classifier.features(x_test, batch_size, progress).cpu().numpy()
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    config = TransferHeadConfig(
        input_shape=(1, 1, train_features.shape[1]), num_classes=classifier.num_classes, seed=seed
    )
    head = fit_transfer_head(train_features, y_train, config, epochs, image_size=size)
    fold_head(classifier, head)
    head_seconds = time.perf_counter() - started
    return TransferResult(
        size,
        len(x_train),
        len(x_test),
        head_accuracy(head.network, train_features, y_train),
        head_accuracy(head.network, test_features, y_test),
        feature_seconds,
        head_seconds,
        classifier,
    )
