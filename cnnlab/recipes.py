"""A data-efficient training recipe for the lab's protocol: far beyond the lab's 58% on a CPU.

The network follows Keller Jordan's airbench (conv-pool-BatchNorm-GELU groups after a frozen
patch-whitening layer); the schedule is SGD with Nesterov momentum, a linear warm-up and linear
decay of the learning rate, label smoothing, weight decay, random crop + flip augmentation, an
exponential moving average (EMA) of the weights, and test-time augmentation (TTA) with flips and
1-pixel shifts. The same schedule, augmentation and TTA also train the lab's own CNN
(``fit_recipe`` works on any ``Model``), which shows what the training alone is worth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from cnnlab.augment import device_generator, generator_states, restore_generators
from cnnlab.errors import ConfigError, DataError
from cnnlab.models import RECIPE_LAB_MODEL, CNNConfig, ModelConfig, create_model, register_model
from cnnlab.training import Callback, History, Model, check_compile_settings

NETWORKS = ("recipe", "lab")


def check_widths(widths) -> None:
    """RecipeNet's three conv-group widths: checked when a recipe is written and when a network is built."""
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"widths must be three positive channel counts, got {widths}")


@dataclass(frozen=True)
class Recipe:
    """Every setting of a recipe; ``replace(RECIPES['fast'], epochs=5)`` makes a variant."""

    network: str = "recipe"  # "recipe" (RecipeNet) or "lab" (the lab's model B, as build_cnn makes it)
    widths: tuple[int, int, int] = (64, 256, 256)  # channels of RecipeNet's three conv groups
    optimizer: str = "sgd"  # Nesterov momentum 0.9 (see Model); "muon": Muon for the conv filters
    filter_lr: float = 0.24  # Muon's peak step for the conv filters (optimizer "muon" only)
    cutout: int = 0  # side of a zeroed square per training image; 0 turns it off
    cpu_bf16: bool = False  # bfloat16 autocast on CPUs that have bf16 units (float32 elsewhere)
    members: int = 1  # networks trained side by side and averaged (RecipeEnsemble); "recipe" network only
    batch_size: int = 256
    epochs: int = 20
    learning_rate: float = 0.2  # peak of the one-cycle schedule
    warmup: float = 0.2  # share of the steps spent rising to the peak
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    translate: int = 2  # crop shift in pixels, reflect-padded
    ema_decay: float = 0.98  # per step; 0 turns the EMA off
    ema_every: int = 5  # steps between EMA updates (each blends with ema_decay ** ema_every)
    tta: int = 2  # 0 none, 1 flips, 2 flips and 1-pixel shifts
    compile: bool = False  # torch.compile the network (pays off on a GPU with long runs)

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ConfigError(f"unknown network {self.network!r}; choose one of {NETWORKS}")
        check_widths(self.widths)
        if self.batch_size < 1 or self.epochs < 1 or self.learning_rate <= 0:
            raise ConfigError("a recipe needs batch_size >= 1, epochs >= 1 and learning_rate > 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.ema_decay < 1 or self.tta not in (0, 1, 2):
            raise ConfigError("need 0 <= warmup < 1, 0 <= ema_decay < 1 and tta in (0, 1, 2)")
        if self.network == "lab" and self.weight_decay:
            raise ConfigError("the lab's network keeps build_cnn's optimizer, without weight decay; set weight_decay=0")
        if self.members < 1 or (self.network == "lab" and self.members > 1):
            raise ConfigError(f"members is a count of RecipeNets (>= 1; 1 for the lab's network), got {self.members}")
        if self.ema_every < 1:
            raise ConfigError(f"need ema_every >= 1 (steps between EMA updates), got {self.ema_every}")
        if not 0 <= self.translate < 16:
            raise ConfigError(f"translate is a shift in pixels, 0..15; got {self.translate}")


RECIPES = {
    # Sized for 2 CPU cores on the lab's 7,500 training images: 10, 5 and 2 minutes on a CPU with
    # bfloat16 units (about 1.6x longer in float32 elsewhere). Three networks side by side beat one network
    # trained twice as long (measured, README): by epoch 24 one network fits 98% of its augmented training images.
    "fast": Recipe(
        widths=(32, 128, 256), batch_size=128, epochs=24, weight_decay=1e-3, translate=4, cpu_bf16=True, members=3
    ),
    "fast5": Recipe(
        widths=(32, 128, 256), batch_size=128, epochs=18, weight_decay=1e-3, translate=4, cpu_bf16=True, members=2
    ),
    "fast2": Recipe(widths=(32, 128, 256), batch_size=128, epochs=16, weight_decay=1e-3, translate=4, cpu_bf16=True),
    # The lab's own CNN (model B by default) trained with the recipe: training alone, same architecture.
    "lab": Recipe(
        network="lab",
        optimizer="adam",
        learning_rate=0.01,
        batch_size=64,
        epochs=30,
        label_smoothing=0.1,
        weight_decay=0.0,
        translate=3,
        ema_decay=0.99,
    ),
    # Full CIFAR-10 on a GPU: airbench94's widths, batch, epochs and step sizes, translated to this mean-loss
    # SGD with momentum 0.9 (same lr / (1 - momentum) and decay per step). Not measured: no GPU was available.
    "gpu": Recipe(
        widths=(64, 256, 256),
        batch_size=1024,
        epochs=10,
        learning_rate=1.0,
        warmup=0.23,
        weight_decay=1.3e-3,
        translate=2,
        compile=True,
    ),
}


def get_recipe(name: str | Recipe) -> Recipe:
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


# ---------------------------------------------------------------------------------------------- network
class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed scale of 1: the next conv's weights can absorb any scale, so learning
    it only adds noise (as in airbench). Fast-moving statistics suit the short schedules."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Sequential):
    """Conv 3x3 -> MaxPool 2x2 -> BN -> GELU -> Conv 3x3 -> BN -> GELU: pooling right after the first
    conv makes the second conv and the activations four times cheaper."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            _dirac_conv(in_channels, channels),
            nn.MaxPool2d(2),
            BatchNorm(channels),
            nn.GELU(),
            _dirac_conv(channels, channels),
            BatchNorm(channels),
            nn.GELU(),
        )


def _dirac_conv(in_channels: int, channels: int) -> nn.Conv2d:
    """A 3x3 conv whose first filters start as identities, so a deep net starts close to a shallow one."""
    conv = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight.data[:in_channels])
    return conv


class RecipeNet(nn.Module):
    """Frozen 2x2 patch whitening, three conv groups, global max pooling, a linear layer.

    The whitening layer decorrelates the pixels of each 2x2 patch (PCA whitening, with each
    direction kept as +/- pair so GELU loses nothing): training starts from features with equal
    variance instead of spending its first epochs learning them.
    """

    WHITEN_KERNEL = 2

    def __init__(self, widths: Sequence[int] = (64, 256, 256), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        patch = in_channels * self.WHITEN_KERNEL**2
        self.whiten = nn.Conv2d(in_channels, 2 * patch, self.WHITEN_KERNEL)
        self.whiten.weight.requires_grad_(False)
        self.groups = nn.Sequential(
            nn.GELU(),
            ConvGroup(2 * patch, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.temperature = 1 / 9  # airbench's logit scale: keeps early softmax outputs soft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.groups(self.whiten(x)))) * self.temperature

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer from the covariance of the 2x2 patches of ``images`` (NCHW)."""
        k = self.WHITEN_KERNEL
        patches = F.unfold(images.float(), k).transpose(1, 2).reshape(-1, images.shape[1] * k * k).double()
        mean = patches.mean(0)
        centred = patches - mean
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(centred))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).float()
        weight = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(weight.view_as(self.whiten.weight))
        self.whiten.bias.copy_(-(weight @ mean.float().to(weight)))


class RecipeEnsemble(nn.Module):
    """Several RecipeNets trained side by side from different initial weights, on the same batches.

    While training, the forward pass gives each member's logits, (members, N, classes), and Model's
    loss is the mean of the members' losses, so each member learns on its own; in eval mode it gives
    the mean of their logits. On 7,500 images one network overfits (98% training accuracy), and
    members that err differently average out much of that variance.
    """

    def __init__(self, members: int, widths: Sequence[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.members = nn.ModuleList(RecipeNet(widths, num_classes, in_channels) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members])
        if not self.training:
            return logits.mean(0)
        if logits.requires_grad:  # the loss averages over members; each gets its whole gradient, as if alone
            logits.register_hook(lambda grad: grad * len(self.members))
        return logits

    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Fit the first member's whitening and copy it: the fit is deterministic, so all would get the same."""
        first, *others = self.members
        first.init_whitening(images, eps)
        for member in others:
            member.whiten.load_state_dict(first.whiten.state_dict())


@dataclass(frozen=True)
class RecipeNetConfig(ModelConfig):
    """RecipeNet's settings: its widths and the recipe's compile settings (the schedule stays in Recipe)."""

    kind: ClassVar[str] = "recipe"
    widths: tuple[int, int, int] = (64, 256, 256)
    optimizer: str = "sgd"
    learning_rate: float = 0.2
    label_smoothing: float = 0.2
    weight_decay: float = 5e-4
    filter_lr: float = 0.24
    cpu_bf16: bool = False
    members: int = 1  # more than one: a RecipeEnsemble of that many networks

    def __post_init__(self):
        super().__post_init__()
        if self.members < 1:
            raise ConfigError(f"an ensemble needs at least 1 member, got {self.members}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        check_widths(self.widths)
        height, width, _ = self.input_shape
        if min(height, width) < 9:  # 2x2 whitening, then three 2x2 poolings
            raise ConfigError(f"RecipeNet needs images of at least 9x9 pixels, got {height}x{width}")
        check_compile_settings(
            self.optimizer, self.learning_rate, weight_decay=self.weight_decay, label_smoothing=self.label_smoothing
        )

    @classmethod
    def from_recipe(cls, recipe: Recipe, input_shape, num_classes=None, class_names=None, seed=0) -> RecipeNetConfig:
        return cls(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            class_names=class_names,
            seed=seed,
            widths=recipe.widths,
            optimizer=recipe.optimizer,
            learning_rate=recipe.learning_rate,
            label_smoothing=recipe.label_smoothing,
            weight_decay=recipe.weight_decay,
            filter_lr=recipe.filter_lr,
            cpu_bf16=recipe.cpu_bf16,
            members=recipe.members,
        )


@register_model("recipe")
def _create_recipe_net(config: RecipeNetConfig, device="auto") -> Model:
    """RecipeNet with an identity-free, untrained whitening layer: fit it with ``init_whitening``
    (build_recipe_model does) or load its saved weights (load_model does)."""
    if config.seed is not None:
        torch.manual_seed(config.seed)
    return Model(
        RecipeNet(config.widths, config.num_classes, config.input_shape[2])
        if config.members == 1
        else RecipeEnsemble(config.members, config.widths, config.num_classes, config.input_shape[2]),
        input_shape=config.input_shape,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        label_smoothing=config.label_smoothing,
        weight_decay=config.weight_decay,
        filter_lr=config.filter_lr,
        cpu_bf16=config.cpu_bf16,
        config=config,
        device=device,
    )


# ---------------------------------------------------------------------------------------------- augmentation
class CropFlip:
    """Per-image random shift (reflect padding) and horizontal flip, as one gather on the device.

    cnnlab.augment reproduces Keras' ImageDataGenerator with a bilinear affine warp; the recipe wants
    whole-pixel shifts (no interpolation blur) and a cheaper op, since it runs on every step.
    """

    def __init__(self, translate: int = 2, flip: bool = True, seed: int | None = 0, cutout: int = 0):
        if translate < 0 or cutout < 0:
            raise ConfigError(f"translate and cutout must be >= 0 pixels, got {translate} and {cutout}")
        self.translate, self.flip, self.seed, self.cutout = translate, flip, seed, cutout
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        return device_generator(self._generators, device, self.seed)

    def get_state(self) -> dict:
        """The random generators' states, for checkpoints: a resumed run draws the same shifts."""
        return generator_states(self._generators)

    def set_state(self, state: dict) -> None:
        restore_generators(self._generators, state, self.seed)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W) in channels_last memory."""
        n, _, height, width = images.shape
        generator, device = self._generator(images.device), images.device
        r = self.translate
        shift_y = torch.randint(-r, r + 1, (n, 1), generator=generator, device=device)
        shift_x = torch.randint(-r, r + 1, (n, 1), generator=generator, device=device)
        rows = _reflect(torch.arange(height, device=device) + shift_y, height)
        cols = torch.arange(width, device=device).expand(n, width)
        if self.flip:
            flipped = torch.rand(n, 1, generator=generator, device=device) < 0.5
            cols = torch.where(flipped, width - 1 - cols, cols)
        cols = _reflect(cols + shift_x, width)
        nhwc = images.permute(0, 2, 3, 1)
        picked = nhwc[torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.cutout:
            picked = self._cut_out(picked, generator)
        return picked.permute(0, 3, 1, 2)

    def _cut_out(self, nhwc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Zero (mid-grey on the [-1, 1] scale) one square of side ``cutout`` inside each image."""
        n, height, width, _ = nhwc.shape
        side, device = min(self.cutout, height, width), nhwc.device
        top = torch.randint(0, height - side + 1, (n, 1, 1), generator=generator, device=device)
        left = torch.randint(0, width - side + 1, (n, 1, 1), generator=generator, device=device)
        rows = torch.arange(height, device=device)[None, :, None]
        cols = torch.arange(width, device=device)[None, None, :]
        square = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        return nhwc.masked_fill(square[..., None], 0.0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside (dcb|abcd|cba), like reflect padding."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


# ---------------------------------------------------------------------------------------------- schedule, EMA
def one_cycle(progress: float, warmup: float, start: float = 0.1) -> float:
    """Learning-rate factor at ``progress`` (0..1) of training: linear from ``start`` to 1 over the
    warm-up, then linear down to 0 at the end."""
    if progress < warmup:
        return start + (1 - start) * progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup))


class OneCycle(Callback):
    """Set the optimizer's learning rate before every step from the one-cycle schedule; its peak is
    the model's learning rate. The step count comes from fit's params and the rate from (epoch, step)
    alone, so it keeps no state and a resumed run continues the schedule exactly."""

    def __init__(self, warmup: float = 0.2, start: float = 0.1):
        self.warmup, self.start = warmup, start

    def on_train_begin(self, logs=None):
        self.steps_per_epoch = math.ceil(self.params["samples"] / self.params["batch_size"])
        self.total = self.steps_per_epoch * self.params["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, step, logs=None):
        progress = (self.epoch * self.steps_per_epoch + step) / self.total
        factor = one_cycle(progress, self.warmup, self.start)
        for group in self.model.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


class WeightEMA(Callback):
    """Keep an exponential moving average of the weights (and BatchNorm statistics) during training
    and put it into the model at the end: the average sits nearer the flat middle of the minimum
    than the last noisy step does. The average is part of checkpoints, so a resumed run continues it.

    The decay warms up as (1 + n) / (10 + n) after n updates (as TensorFlow's moving averages do),
    so in a short run the average is not dominated by the untrained starting weights. With
    ``every`` > 1 the average is updated every that many steps with ``decay ** every``: the same
    memory in steps, at a fraction of the cost (a full pass over the weights each time).
    """

    def __init__(self, decay: float = 0.98, every: int = 1):
        if not 0 < decay < 1:
            raise ConfigError(f"EMA decay must lie in (0, 1), got {decay}")
        if every < 1:
            raise ConfigError(f"EMA updates every {every} steps: need at least 1")
        self.decay, self.every = decay, every

    def current_decay(self) -> float:
        return min(self.decay**self.every, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def _blend(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        weight = 1 - self.current_decay()
        for average, value in zip(averaged, current, strict=True):
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:  # BatchNorm's batch counter
                average.copy_(value)

    def on_train_begin(self, logs=None):
        self.steps = self.updates = 0
        self.average = AveragedModel(self.model.network, multi_avg_fn=self._blend, use_buffers=True)

    def on_train_batch_end(self, step, logs=None):
        self.steps += 1
        if (self.steps - 1) % self.every:
            return
        self.updates += 1  # the first update copies the weights; blending starts with the second
        self.average.update_parameters(self.model.network)

    def on_train_end(self, logs=None):
        if not (logs or {}).get("interrupted"):
            self.model.network.load_state_dict(self.average.module.state_dict())

    def get_state(self) -> dict:
        return {"average": self.average.state_dict(), "steps": self.steps, "updates": self.updates}

    def set_state(self, state: dict) -> None:
        self.average.load_state_dict(state["average"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])


# ---------------------------------------------------------------------------------------------- TTA
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
    images = _nchw(model, x)
    network = model.network.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = model.scaled(images[start : start + batch_size])
        with torch.autocast(model.device.type, dtype=model.amp_dtype, enabled=model.amp_dtype is not None):
            logits = [
                network(view.contiguous(memory_format=torch.channels_last)).float() for view in tta_views(batch, level)
            ]
        outputs.append(torch.stack(logits).mean(0))
    return torch.cat(outputs)


def evaluate_tta(model: Model, x, y, level: int = 2) -> dict[str, float]:
    """Loss (plain cross-entropy of the averaged logits) and accuracy with test-time augmentation."""
    logits = tta_logits(model, x, level)
    labels = torch.tensor(np.asarray(y)).reshape(-1).long().to(logits.device)
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


def _nchw(model: Model, x) -> torch.Tensor:
    """NHWC images on the model's device as an NCHW view: uint8 kept as it is (``model.scaled`` makes
    each batch float), floats as float32."""
    images = x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))  # a copy: arrays may be read-only
    if images.ndim != 4 or not (images.is_floating_point() or images.dtype == torch.uint8):
        raise DataError(
            f"need NHWC images, uint8 or floats scaled to [-1, 1], got {images.dtype} {tuple(images.shape)}"
        )
    dtype = torch.uint8 if images.dtype == torch.uint8 else torch.float32
    return images.to(model.device, dtype).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- training
def build_recipe_model(
    recipe: str | Recipe, x_train, seed: int = 0, device="auto", num_classes: int | None = None, class_names=None
) -> Model:
    """The recipe's network, its whitening fitted to ``x_train`` (NHWC), compiled as SGD + Nesterov."""
    settings = get_recipe(recipe)
    config = RecipeNetConfig.from_recipe(settings, np.shape(x_train)[1:], num_classes, class_names, seed)
    model = create_model(config, device)
    model.network.init_whitening(model.scaled(_nchw(model, np.asarray(x_train)[:5000])))
    if settings.compile:
        model.network.compile()  # in place: state_dict keys and checkpoints stay as without compiling
    return model


def build_lab_model(
    recipe: str | Recipe = "lab", seed: int = 0, device="auto", input_shape=(32, 32, 3), config: CNNConfig | None = None
) -> Model:
    """The lab's CNN, exactly as ``build_cnn`` makes it (model B unless ``config`` says otherwise),
    compiled with the recipe's optimizer, peak learning rate and label smoothing."""
    settings = get_recipe(recipe)
    config = (config or RECIPE_LAB_MODEL).replace(
        input_shape=tuple(input_shape), optimizer=settings.optimizer, learning_rate=settings.learning_rate, seed=seed
    )
    model = create_model(config, device)
    model.label_smoothing = settings.label_smoothing
    return model


def fit_recipe(
    model: Model,
    data,
    recipe: str | Recipe = "fast",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    run_dir=None,
    resume: bool = False,
) -> History:
    """Train any Model on ``data`` (a LabData) with the recipe's schedule, augmentation and EMA.

    The model's optimizer and label smoothing stay as built, apart from the learning rate, which
    the one-cycle schedule drives from the model's ``learning_rate`` as its peak.
    """
    settings = get_recipe(recipe)
    schedule = [OneCycle(settings.warmup)]
    if settings.ema_decay:
        schedule.append(WeightEMA(settings.ema_decay, settings.ema_every))
    return model.fit(
        data.x_train,
        data.y_train,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        verbose=verbose,
        seed=seed,
        callbacks=[*schedule, *callbacks],
        augment=CropFlip(settings.translate, seed=seed, cutout=settings.cutout),
        run_dir=run_dir,
        resume=resume,
    )


def build_model(recipe: str | Recipe, x_train, seed: int = 0, device="auto", class_names=None) -> Model:
    """The recipe's network (RecipeNet, or the lab's model B), compiled for the recipe's training."""
    settings = get_recipe(recipe)
    if settings.network == "lab":
        config = RECIPE_LAB_MODEL.replace(class_names=tuple(class_names), num_classes=None) if class_names else None
        return build_lab_model(settings, seed, device, np.shape(x_train)[1:], config)
    return build_recipe_model(settings, x_train, seed, device, class_names=class_names)


def train_recipe(data, recipe: str | Recipe = "fast", seed: int = 0, device="auto", **fit_options) -> dict:
    """Build, train and test the recipe's model on ``data`` (a LabData): returns the model, its history,
    the validation and test results with TTA, and the wall time of the whole."""
    settings = get_recipe(recipe)
    started = time.perf_counter()
    model = build_model(settings, data.x_train, seed, device, getattr(data, "class_names", None))
    history = fit_recipe(model, data, settings, seed, **fit_options)
    return {
        "model": model,
        "history": history,
        "val": evaluate_tta(model, data.x_val, data.y_val, settings.tta),
        "test": evaluate_tta(model, data.x_test, data.y_test, settings.tta),
        "seconds": time.perf_counter() - started,
    }
