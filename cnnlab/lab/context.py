"""What every lab part shares: the run's settings, data and trained models (``LabContext``)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.core.errors import DataError
from cnnlab.lab.store import CorruptPart, Section, read_stored_part

MODES = ("full", "quick", "tiny")
PHOTOS_ENV = "CNNLAB_PHOTOS"
# The lab's CNNs are sized for CIFAR's 32x32 images: their cost grows with the pixels (a 170x256 photo costs
# 42 times a CIFAR image per step) while their few filters gain little from fine detail. Larger images are
# downscaled for them to this longer side, the aspect ratio kept, unless --image-size chose a size.
LAB_MAX_SIDE = 64
RESIZE_CHUNK = 256  # images resized at a time: a float copy of them all could take gigabytes


class PartSkipped(Exception):
    """A part cannot run because an input is missing; the report shows ``reason`` and ``remedy``."""

    def __init__(self, reason: str, remedy: str):
        super().__init__(f"{reason}; {remedy}")
        self.reason, self.remedy = reason, remedy


@dataclass
class LabContext:
    """What every part shares: the output folder, the size of the run, the inputs and cached results.

    ``quick`` trains few epochs on the lab's data; ``tiny`` (for tests and the CI notebook) also cuts
    the data to a few hundred images and every experiment to its smallest useful form.
    """

    out: Path
    quick: bool = False
    tiny: bool = False
    data_source: str | os.PathLike | None = None
    data_options: dict = field(default_factory=dict)  # load_dataset's options: image_size, color_mode, ...
    photos: str | os.PathLike | None = None
    weights: str | os.PathLike | None = None
    device: str = "auto"
    carbon: bool = True
    cache: dict = field(default_factory=dict)  # data and models shared between parts of one process

    @property
    def mode(self) -> str:
        return "tiny" if self.tiny else "quick" if self.quick else "full"

    def path(self, *parts: str) -> Path:
        target = self.out.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def setting(self, full, quick, tiny=None):
        """The value of a setting for this run's size; tiny runs fall back to the quick value."""
        if self.tiny and tiny is not None:
            return tiny
        return quick if self.quick or self.tiny else full

    def epochs(self, full: int, quick: int) -> int:
        return self.setting(full, quick, tiny=1)

    def training_callbacks(self) -> list:
        """Callbacks every training run of the lab gets: energy and CO2 tracking unless it is off."""
        if not self.carbon:
            return []
        from cnnlab.carbon.tracker import CarbonCallback

        return [CarbonCallback(verbose=False)]

    def lab_data(self, native: bool = False):
        """The lab's train/validation/test split of CIFAR-10 (or the data set ``data_source`` names), loaded
        once per process as uint8 (the trainer scales each batch: a quarter of float32's memory); tiny runs
        use 600/200/200.

        Images larger than LAB_MAX_SIDE come downscaled for the lab's CNNs (``source["note"]`` says so, and
        part 3 reports it); ``native=True`` gives them as loaded, for a pretrained network that resizes itself.
        """
        if "data" not in self.cache:
            from cnnlab.data.split import load_lab_data

            sizes = {"n_train_val": 800, "n_test": 200} if self.tiny else {}
            try:
                loaded = load_lab_data(self.data_source, dtype="uint8", stream=False, **sizes, **self.data_options)
            except DataError as error:
                what = "CIFAR-10" if self.data_source is None else "the data"
                raise PartSkipped(f"{what} could not be loaded", str(error)) from None  # the error names path and fix
            self.cache["native_data"] = loaded
            self.cache["data"] = loaded if self.data_options.get("image_size") else downscaled_for_lab(loaded)
        return self.cache["native_data" if native and "native_data" in self.cache else "data"]

    def downscaled(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(loaded size, size the lab's CNNs train on) when lab_data downscaled the images, else None."""
        resize = self.lab_data().source.get("lab_resize")
        return (tuple(resize["from"]), tuple(resize["to"])) if resize else None

    def is_cifar10(self) -> bool:
        """Whether the lab runs on CIFAR-10, the data its questions and counts are written for."""
        return self.lab_data().source.get("kind", "cifar10") == "cifar10"

    def data_name(self) -> str:
        """How the report names the data set: CIFAR-10, CIFAR-100 or the folder/file it came from."""
        source = self.lab_data().source
        kind = source.get("kind", "cifar10")
        return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(
            kind
        ) or f"`{source.get('path') or source.get('source')}`"

    def trained_model(self, key: str, build: dict, batch_size: int, epochs: int, augment=None):
        """The model of run ``key`` (folder OUT/runs/KEY) and its history (a dict of per-epoch lists).

        A run that finished in an earlier process is loaded, not fitted again (refitting would also
        overwrite its carbon record); a killed run resumes from its checkpoint; a model trained by an
        earlier part of this process is reused. ``build`` holds build_cnn's keywords (learning rate 0.01
        unless given, as in the lab).
        """
        from cnnlab.models.cnn import build_cnn
        from cnnlab.models.registry import load_model

        run = self.out / "runs" / key
        models = self.cache.setdefault("models", {})
        if key not in models and run_finished(run, epochs):
            models[key] = load_model(run / "weights.safetensors", device=self.device)
        if key not in models:
            data = self.lab_data()
            settings = {"learning_rate": 0.01, **build}
            model = build_cnn(
                input_shape=data.input_shape, class_names=data.class_names, device=self.device, **settings
            )
            model.fit(
                data.x_train,
                data.y_train,
                batch_size=batch_size,
                epochs=epochs,
                verbose=2,
                augment=augment,
                validation_data=(data.x_val, data.y_val),
                run_dir=run,
                resume=True,
                callbacks=self.training_callbacks(),
            )
            models[key] = model
        return models[key], read_history(run)

    def earlier_facts(self, key: str) -> dict | None:
        """The facts an earlier part stored in this output folder (None if it has not run with this size)."""
        try:
            saved = read_stored_part(self.out / "parts" / f"{key}.json")
        except (OSError, CorruptPart):
            return None
        return saved["section"]["facts"] if saved and saved.get("mode") == self.mode else None

    def photos_dir(self) -> Path:
        """The folder of the user's photos for ResNet50 (--photos or $CNNLAB_PHOTOS)."""
        given = self.photos or os.environ.get(PHOTOS_ENV)
        remedy = f"pass a folder of JPEG/PNG photos with --photos DIR or set {PHOTOS_ENV}=DIR"
        if not given:
            raise PartSkipped("no photos were given", remedy)
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise PartSkipped(f"the photos folder {folder} does not exist", remedy)
        return folder


def downscaled_for_lab(data):
    """``data`` with images whose longer side exceeds LAB_MAX_SIDE downscaled to it (aspect kept), and a note
    in its source saying from what to what; smaller images come back unchanged."""
    from dataclasses import replace

    import numpy as np

    from cnnlab.evaluate.generalization import resize_images

    height, width, channels = data.input_shape
    scale = LAB_MAX_SIDE / max(height, width)
    if scale >= 1:
        return data
    size = (max(1, round(height * scale)), max(1, round(width * scale)))

    def resized(x):
        chunks = [resize_images(x[start : start + RESIZE_CHUNK], size) for start in range(0, len(x), RESIZE_CHUNK)]
        return np.concatenate(chunks) if chunks else np.zeros((0, *size, channels), x.dtype)

    note = (f"images downscaled from {height}x{width} to {size[0]}x{size[1]} for the lab's CNNs, which were "
            f"sized for 32x32 (each step would cost {height * width / (size[0] * size[1]):.0f}x as much at full "
            "size); --image-size HxW chooses another size")  # fmt: skip
    source = {**data.source, "lab_resize": {"from": [height, width], "to": list(size)}}
    source["note"] = "; ".join(filter(None, (data.source.get("note"), note)))
    return replace(data, x_train=resized(data.x_train), x_val=resized(data.x_val), x_test=resized(data.x_test),
                   source=source, input_shape=(*size, channels))  # fmt: skip


def run_finished(run: Path, epochs: int) -> bool:
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return metrics.get("epochs_run", 0) >= epochs and (run / "weights.safetensors").exists()


def read_history(run: Path) -> dict[str, list[float]]:
    """A run folder's history.csv as Keras' History.history: metric name -> one value per epoch."""
    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {name: [float(row[name]) for row in rows] for name in (rows[0] if rows else {}) if name != "epoch"}


Part = Callable[[LabContext], Section]
