"""Fine-tuning a pretrained network in fastai's two phases: the new head alone, then the whole network.

Phase 1 trains the head on a frozen body. Nothing is augmented there, so the body's features are computed
once and the head trains on them in seconds (a Linear layer instead of 25 million weights per step).
Phase 2 unfreezes the stages from ``config.train_from`` on, gives each a smaller learning rate the
further it is from the head, and trains with a one-cycle schedule, shifts and flips. Phase 2 is an ordinary
``Model.fit``: callbacks, verified checkpoints, resume, carbon tracking and mixed precision all apply.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.core.errors import ConfigError
from cnnlab.data.crop_flip import CropFlip
from cnnlab.train.callbacks import Callback, History
from cnnlab.train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT
from cnnlab.train.model import Model
from cnnlab.train.schedules import OneCycle

FLIP_TTA = 1  # test-time augmentation: the images and their mirror images
HEAD_LEARNING_RATE = 3e-3  # Adam on the frozen features: converges within an epoch or two


def _feature_grid(features: torch.Tensor) -> torch.Tensor:
    return features[:, None, None, :]  # (N, 1, 1, 2048): an "image" of 1x1 pixels, as Model.fit takes


def train_head(
    model: Model, x, y, epochs: int, batch_size: int = 64, validation_data=None, verbose: int = 1, seed: int = 0,
    class_weight: str | dict | None = None,
) -> History:  # fmt: skip
    """Phase 1: the model's head trained alone on features computed once (Adam, the model's label smoothing,
    the loss weighed per class by ``class_weight`` as in ``Model.fit``)."""
    progress = verbose == 1
    features = _feature_grid(model.features(x, progress=progress))
    validation = None
    if validation_data is not None:
        validation = (_feature_grid(model.features(validation_data[0], progress=progress)), validation_data[1])
    head = nn.Sequential(nn.Flatten(), model.network.head)  # shares the head's weights
    trainer = Model(
        head,
        input_shape=(1, 1, features.shape[-1]),
        optimizer="adam",
        learning_rate=HEAD_LEARNING_RATE,
        label_smoothing=model.label_smoothing,
        num_classes=model.num_classes,
        device=model.device,
        mixed_precision=False,
    )
    return trainer.fit(features, y, batch_size=batch_size, epochs=epochs, validation_data=validation,
                       verbose=verbose, seed=seed, class_weight=class_weight)  # fmt: skip


def _has_checkpoint(run_dir) -> bool:
    return run_dir is not None and any((Path(run_dir) / name).is_file() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT))


def default_translate(model: Model) -> int:
    """Shift range of the augmentation: 4 px at CIFAR's 32 px (the recipes'), an eighth of the side above."""
    return max(2, min(model.input_shape[:2]) // 8)


def fine_tune(
    model: Model,
    x,
    y,
    epochs: int = 6,
    freeze_epochs: int = 1,
    batch_size: int = 64,
    validation_data: tuple | None = None,
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    seed: int | None = None,
    run_dir=None,
    resume: bool = False,
    warmup: float = 0.2,
    augment=None,
    class_weight: str | dict | None = None,
) -> History:
    """Fine-tune a pretrained model (``create_model(ResNet50Config(...))``): ``freeze_epochs`` of the head
    alone, then ``epochs - freeze_epochs`` of the network from ``config.train_from`` on.

    ``augment`` defaults to random shifts and flips; the one-cycle schedule peaks at each stage's rate.
    ``class_weight`` ("balanced" or {class_index: weight}) weighs the training loss of both phases per class.
    A resume whose run folder already holds a phase 2 checkpoint skips phase 1 (the checkpoint holds the
    trained head), so it ends where an uninterrupted run ends. Returns phase 2's History (phase 1's if
    all epochs are frozen, which is transfer learning).
    """
    if not hasattr(model, "set_trainable"):
        raise ConfigError("fine_tune takes a pretrained model (create_model(ResNet50Config(...))); use fit for others")
    if freeze_epochs < 0 or epochs < 0 or freeze_epochs > epochs:
        raise ConfigError(
            f"freeze_epochs={freeze_epochs} with epochs={epochs}: the frozen epochs are part of the epochs; "
            "give 0 <= freeze_epochs <= epochs"
        )
    seed = int(model.config.seed or 0) if seed is None else seed
    history = None
    if freeze_epochs and not (resume and _has_checkpoint(run_dir)):
        if verbose:
            print(f"Phase 1: the head alone on the frozen body's features, {freeze_epochs} epoch(s)")
        history = train_head(model, x, y, freeze_epochs, batch_size, validation_data, verbose, seed, class_weight)
    if epochs == freeze_epochs:
        model.network.eval()
        return history if history is not None else History()
    model.set_trainable(model.config.train_from)
    if verbose:
        print(f"Phase 2: the network from {model.config.train_from} on, {epochs - freeze_epochs} epoch(s), one-cycle")
    augment = augment if augment is not None else CropFlip(default_translate(model), seed=seed)
    return model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs - freeze_epochs,
        validation_data=validation_data,
        callbacks=[OneCycle(warmup), *callbacks],
        verbose=verbose,
        seed=seed,
        run_dir=run_dir,
        resume=resume,
        augment=augment,
        class_weight=class_weight,
    )


@dataclass(frozen=True)
class FineTuneBudget:
    """A fine-tuning run sized for a time budget on the lab's protocol (7,500 CIFAR-10 training images)."""

    image_size: int = 64
    epochs: int = 6
    freeze_epochs: int = 1
    batch_size: int = 64
    train_from: str = "conv1"


# The budgets the lab and the benchmark train, measured on 2 CPU threads (seed 0, lossy CIFAR-10 copy):
# 64 px for 5 epochs gave 81.6% in 314 s, 96 px for 3 epochs 82.2% in 352 s, 96 px for 4 epochs 84.45% in
# 483-528 s, and 96 px for 5 epochs with conv1 and conv2 frozen (no backward pass through the two stages at
# the highest resolution) 85.95% in 537 s: that is "full". "short" is the 352 s run; "lab" (the head, then
# one epoch of the whole network at 64 px) is lab part 9's, next to the from-scratch recipe.
BUDGETS = {
    "full": FineTuneBudget(image_size=96, epochs=5, train_from="conv3"),
    "short": FineTuneBudget(image_size=96, epochs=3),
    "lab": FineTuneBudget(epochs=2),
}


def train_pretrained(data, budget: str | FineTuneBudget = "full", seed: int = 0, device="auto", weights=None,
                     **fit_options) -> dict:  # fmt: skip
    """Build, fine-tune and test ResNet50 on ``data`` (a LabData) as ``train_recipe`` does a recipe: returns
    the model, its history, validation and test results with flip TTA, and the wall time of the whole."""
    from cnnlab.evaluate.tta import evaluate_tta
    from cnnlab.models.registry import create_model
    from cnnlab.models.resnet50_classifier import ResNet50Config

    chosen = BUDGETS[budget] if isinstance(budget, str) else budget
    started = time.perf_counter()
    config = ResNet50Config(input_shape=data.input_shape, class_names=data.class_names, seed=seed, weights=weights,
                            image_size=chosen.image_size, train_from=chosen.train_from)  # fmt: skip
    model = create_model(config, device)
    history = fine_tune(model, data.x_train, data.y_train, epochs=chosen.epochs, freeze_epochs=chosen.freeze_epochs,
                        batch_size=chosen.batch_size, seed=seed, **fit_options)  # fmt: skip
    return {
        "model": model,
        "history": history,
        "val": evaluate_tta(model, data.x_val, data.y_val, FLIP_TTA),
        "test": evaluate_tta(model, data.x_test, data.y_test, FLIP_TTA),
        "seconds": time.perf_counter() - started,
    }
