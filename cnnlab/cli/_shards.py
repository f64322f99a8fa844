"""`cnnlab train --data SHARDS`: the lab's CNN trained on a packed shard set (``cnnlab pack``), streamed.

The lab's protocol as ``load_lab_data`` applies it, on ranges of the splits in pack order (a seeded shuffle,
so a range is a random sample): the first ``n_train_val`` training samples, their last ``val_fraction`` for
validation, the first ``n_test`` test samples (without a test split: the last 20% of the training split).
Recipes and ResNet50 train on arrays in memory, so a shard set trains the lab's CNN only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cnnlab.cli._class_weight import class_weight_from_args
from cnnlab.cli._data import dataset_from_args
from cnnlab.cli._report import report_test_results
from cnnlab.core.errors import ConfigError

SAMPLE_IMAGES = 18  # training images read for the run folder's samples.png


def uses_shards(spec) -> bool:
    """Whether --data names a packed shard set."""
    from cnnlab.data.shards import is_shard_set

    return spec is not None and is_shard_set(Path(spec).expanduser())


@dataclass
class ShardLabData:
    """LabData's counterpart for a shard set: the three splits as feeds; ``x_train``/``y_train`` hold only the
    first training images, for the figures a run folder gets."""

    train: object
    validation: object
    test: object
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    source: dict
    x_train: np.ndarray
    y_train: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        height, width, channels = self.input_shape
        return (
            f"train {self.train.samples:,}, validation {self.validation.samples:,}, test {self.test.samples:,} "
            f"images, streamed; {self.num_classes} classes, {height}x{width}x{channels}; source {self.source['path']}"
        )


def lab_shards(dataset, n_train_val: int, n_test: int, val_fraction: float) -> ShardLabData:
    """The lab's split of a ShardDataset (see the module's docstring)."""
    from cnnlab.data.split import HELD_OUT_TEST

    count, source = dataset.count("train"), dict(dataset.origin)
    pool = count if dataset.test is not None else count - round(count * HELD_OUT_TEST)
    used = min(n_train_val, pool)
    cut = used - max(1, round(used * val_fraction))
    if cut < 1:
        raise ConfigError(f"{dataset.path}: {used} training image(s) leave none to train on after validation")
    if dataset.test is not None:
        test = dataset.feed("test", 0, n_test)
    else:
        test = dataset.feed("train", pool, pool + n_test)
        source["note"] = f"no test split: the last {HELD_OUT_TEST:.0%} of the training shards held out as the test set"
    source["split"] = {
        "n_train_val": n_train_val,
        "n_test": n_test,
        "val_fraction": val_fraction,
        "test_images": test.samples,
    }
    train = dataset.feed("train", 0, cut)
    images, labels = next(iter(dataset.feed("train", 0, SAMPLE_IMAGES).batches(SAMPLE_IMAGES)))
    return ShardLabData(
        train,
        dataset.feed("train", cut, used),
        test,
        dataset.class_names,
        dataset.image_shape,
        source,
        images.numpy(),
        labels.numpy(),
    )


def train_on_shards(args: argparse.Namespace, settings: dict, out: Path, callbacks: list, build_args: dict) -> int:
    """cnnlab train's CNN path with feeds instead of arrays: build, fit, test on the test feed, report."""
    from cnnlab.data.augment import parse_augment_spec
    from cnnlab.evaluate.predict import Evaluation
    from cnnlab.models.cnn import build_cnn
    from cnnlab.train.callbacks import EarlyStopping

    if args.recipe or args.model not in (None, "cnn"):
        raise ConfigError(
            "--data with a packed shard set trains the lab's CNN, streamed; drop --recipe and --model "
            "(recipes and resnet50 train on arrays in memory: give them the image folder)"
        )
    options = argparse.Namespace(**{**vars(args), "data": settings["data"]})
    data = lab_shards(dataset_from_args(options), settings["n_train_val"], settings["n_test"], settings["val_fraction"])
    print(f"Model: cnn (a packed shard set streams through the lab's CNN)\nData: {data.summary()}")
    print(f"Classes: {', '.join(data.class_names)}")
    if data.source.get("note"):
        print(f"Note: {data.source['note']}")
    class_weight = class_weight_from_args(
        args, SimpleNamespace(class_names=data.class_names, y_train=data.train.labels)
    )
    model = build_cnn(input_shape=data.input_shape, class_names=data.class_names, device=args.device, **build_args)
    model.summary()
    augment = parse_augment_spec(settings["augment"], seed=settings["seed"]) if settings["augment"] else None
    if settings["early_stopping"]:
        callbacks = [*callbacks, EarlyStopping(patience=settings["early_stopping"])]
    history = model.fit(
        data.train,
        None,
        batch_size=settings["batch_size"],
        epochs=settings["epochs"],
        validation_data=data.validation,
        callbacks=callbacks,
        seed=settings["seed"],
        run_dir=out,
        resume=args.resume,
        verbose=2 if args.quiet else 1,
        augment=augment,
        class_weight=class_weight,
    )
    test = Evaluation.from_probabilities(model.predict(data.test), data.test.labels, data.class_names)
    return report_test_results(out, data, history, test)
