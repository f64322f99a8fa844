"""Which images ``cnnlab evaluate`` scores, so that an accuracy is never a score on training images by mistake.

``cnnlab train`` records its data's checksums and split in the run folder (metrics.json, ``data_source``).
Given the data it trained on, evaluation scores the test images that training held out, found again by
the same split; where it cannot tell them apart, it says how many of the images the model has seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.load import load_dataset
from cnnlab.data.split import load_lab_data
from cnnlab.train.model import Model

NOT_A_TEST_SCORE = "this accuracy is not a test score"


@dataclass
class EvaluationSet:
    """The labelled images to score (uint8 arrays, or a feed when the data is streamed), their class names,
    and a line on how they relate to the training data."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    note: str | None = None


def training_source(model_path: str | os.PathLike) -> dict | None:
    """The ``data_source`` a run folder's metrics.json records (a model file's own folder counts), if any."""
    path = Path(model_path)
    metrics = (path if path.is_dir() else path.parent) / "metrics.json"
    try:
        source = json.loads(metrics.read_text()).get("data_source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, dict) else None


def _identities(origin: dict) -> dict[str, str]:
    """Per split, what identifies its images: a folder's per-split checksums, else the file's checksum."""
    if origin.get("split_checksums"):
        return dict(origin["split_checksums"])
    return {"train": origin["checksum"]} if origin.get("checksum") else {}


def evaluation_set(model: Model, spec: str | os.PathLike | None, trained_on: dict | None = None) -> EvaluationSet:
    """The data's test split (all of it when it has none), decoded as the model's training data was. When the
    data is what the model trained on (``trained_on``: the run's ``data_source``), the images training held
    out are scored instead, or a note says how many of the scored images were training images."""
    height, width, channels = model.input_shape
    trained_on = trained_on or {}
    load = trained_on.get("load") or {}
    options = {"image_size": (height, width), "color_mode": "grayscale" if channels == 1 else "rgb"}
    folder = spec is not None and Path(spec).expanduser().is_dir()
    if folder and load.get("resize") in ("crop", "pad"):
        options[f"{load['resize']}_to_aspect_ratio"] = True
    if folder and load.get("class_names"):
        options["class_names"] = list(model.class_names)
    dataset = load_dataset(spec, **options)
    test = _split(dataset, "test")
    if test is not None:
        return EvaluationSet(*test, dataset.class_names)
    everything = EvaluationSet(*_split(dataset, "train"), dataset.class_names)
    trained = _identities(trained_on).get("train")
    if trained and _identities(dataset.origin).get("train") == trained:
        return _trained_on_these(spec, options, dataset, trained_on)
    if (
        spec is not None
        and trained_on.get("path")
        and Path(trained_on["path"]).resolve() == Path(spec).expanduser().resolve()
    ):
        everything.note = (
            f"the folder the model was trained on, changed since (its checksum differs): some of these "
            f"{len(everything.labels)} images were probably used in training: {NOT_A_TEST_SCORE}"
        )
    return everything


def _trained_on_these(spec, options: dict, dataset, trained_on: dict) -> EvaluationSet:
    """The data set is the one the model trained on and has no test split of its own: find what training held
    out as test, else say that the images were used in training."""
    everything = EvaluationSet(*_split(dataset, "train"), dataset.class_names)
    count, names = len(everything.labels), dataset.class_names
    load, split = trained_on.get("load") or {}, trained_on.get("split") or {}
    if load.get("validation_split"):  # held out while loading (--validation-split): load it so again
        seed = load.get("seed") or 0
        images, labels = _split(load_dataset(spec, **options, validation_split=load["validation_split"], seed=seed),
                                "test")  # fmt: skip
        note = (
            f"the data the model was trained on: scoring the {load['validation_split']:.0%} that training held out "
            f"as its test set ({len(labels)} images, split seed {seed})"
        )
        return EvaluationSet(images, labels, names, note)
    if split and split.get("held_out_test") is None:  # training had a test split: these are its training images
        everything.note = f"all {count} of these images were used in training: {NOT_A_TEST_SCORE}"
        return everything
    held_out = _held_out(dataset, split)
    if held_out is None:
        why = "no split recorded" if not split else "the images changed"
        everything.note = (
            f"the data the model was trained on, and its test split cannot be found again ({why}): most of these "
            f"{count} images were used in training: {NOT_A_TEST_SCORE}"
        )
        return everything
    x_test, y_test = held_out
    note = (
        f"the data the model was trained on, which has no test split: scoring the {split['held_out_test']:.0%} that "
        f"training held out as its test set ({len(y_test)} of {count} images, split seed {split['seed']})"
    )
    return EvaluationSet(x_test, y_test, names, note)


def _held_out(dataset, split: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The test images ``load_lab_data`` held out in training, split again as recorded; None when it can't be."""
    keys = ("n_train_val", "n_test", "val_fraction", "seed")
    if not split or any(key not in split for key in keys):
        return None
    data = load_lab_data(dataset, dtype="uint8", **{key: split[key] for key in keys})
    if len(data.y_test) != split.get("test_images"):
        return None
    return data.test if getattr(data, "streamed", False) else data.x_test, data.y_test


def _split(dataset, split: str) -> tuple | None:
    """(images, labels) of a data set's "train" or "test" split, None when it has no such split: arrays, or the
    feed of a streamed set (a folder over the memory limit)."""
    if getattr(dataset, "streamed", False):
        feed = getattr(dataset, split)
        return None if feed is None else (feed, feed.labels)
    images = getattr(dataset, f"x_{split}")
    return None if images is None else (images, getattr(dataset, f"y_{split}"))
