"""A data-efficient training recipe for the lab's protocol: far beyond the lab's 58% on a CPU.

The network follows Keller Jordan's airbench (conv-pool-BatchNorm-GELU groups after a frozen
patch-whitening layer); the schedule is SGD with Nesterov momentum, a linear warm-up and linear
decay of the learning rate, label smoothing, weight decay, random crop + flip augmentation, an
exponential moving average (EMA) of the weights, and test-time augmentation (TTA) with flips and
1-pixel shifts. The same schedule, augmentation and TTA also train the lab's own CNN
(``fit_recipe`` works on any ``Model``), which shows what the training alone is worth.

"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnlab.core.errors import ConfigError
from cnnlab.data.crop_flip import CropFlip
from cnnlab.data.stream import first_images
from cnnlab.evaluate.tta import evaluate_tta
from cnnlab.models.cnn import RECIPE_LAB_MODEL, CNNConfig
from cnnlab.models.recipe_net import RecipeNetConfig, check_widths
from cnnlab.models.registry import create_model
from cnnlab.train.callbacks import Callback, History, WeightEMA
from cnnlab.train.inputs import device_images, nchw, scale_batch
from cnnlab.train.model import Model
from cnnlab.train.schedules import OneCycle

NETWORKS = ("recipe", "lab")


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


def recipe_net_config(recipe: Recipe, input_shape, num_classes=None, class_names=None, seed=0) -> RecipeNetConfig:
    """The network settings of a recipe, as the config that a saved RecipeNet carries."""
    return RecipeNetConfig(
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


def build_recipe_model(
    recipe: str | Recipe, x_train, seed: int = 0, device="auto", num_classes: int | None = None, class_names=None
) -> Model:
    """The recipe's network, its whitening fitted to ``x_train`` (NHWC, or a streamed split), compiled as SGD +
    Nesterov."""
    settings = get_recipe(recipe)
    sample = first_images(x_train, None, 5000)[0]
    config = recipe_net_config(settings, np.shape(sample)[1:], num_classes, class_names, seed)
    model = create_model(config, device)
    model.network.init_whitening(scale_batch(nchw(device_images(sample, model.device))))
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
    class_weight: str | dict | None = None,
) -> History:
    """Train any Model on ``data`` (a LabData or StreamedLabData) with the recipe's schedule, augmentation and EMA.

    The model's optimizer and label smoothing stay as built, apart from the learning rate, which
    the one-cycle schedule drives from the model's ``learning_rate`` as its peak. ``class_weight``
    weighs the training loss per class, as ``Model.fit`` does (every member of an ensemble alike).
    """
    settings = get_recipe(recipe)
    x, y = (data.train, None) if getattr(data, "streamed", False) else (data.x_train, data.y_train)
    schedule = [OneCycle(settings.warmup)]
    if settings.ema_decay:
        schedule.append(WeightEMA(settings.ema_decay, settings.ema_every))
    return model.fit(
        x,
        y,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        verbose=verbose,
        seed=seed,
        callbacks=[*schedule, *callbacks],
        augment=CropFlip(settings.translate, seed=seed, cutout=settings.cutout),
        run_dir=run_dir,
        resume=resume,
        class_weight=class_weight,
    )


def build_model(recipe: str | Recipe, x_train, seed: int = 0, device="auto", class_names=None) -> Model:
    """The recipe's network (RecipeNet, or the lab's model B), compiled for the recipe's training."""
    settings = get_recipe(recipe)
    if settings.network == "lab":
        config = RECIPE_LAB_MODEL.replace(class_names=tuple(class_names), num_classes=None) if class_names else None
        return build_lab_model(settings, seed, device, np.shape(first_images(x_train, None, 1)[0])[1:], config)
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
